"""The router's view of one model's canary, read from that model's JSON access log of the shared nginx.

The router writes each model's requests to its own log
(``<home>/deployments/<model>/router/access.log``), so a reader never sees another model's traffic.

Every line lists the upstream attempts of one request (``$upstream_addr``,
``$upstream_status``, ``$upstream_response_time``, comma-separated when nginx
retried on the next upstream). An attempt on the canary's upstream address
failed when its status is 5xx, or missing (connection refused or reset:
nginx records 502). That includes failures the canary's own ``/metrics``
cannot show: a crash, a hang, a broken hop in front of it.

A request the split sent to the canary pool (``pool`` canary) that shows no
attempt on the canary at all was answered by the stable backup because nginx's
passive health check had marked the canary down: it counts as one failed
canary attempt, so a dead canary keeps failing the analysis while its traffic
is served by stable.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from ml_platform.deployment.measurements import PREDICT_ENDPOINT, RouterAttempt

CANARY_POOL = "canary"  # the weighted split's canary pool in nginx.conf (stable is its backup)


def pool_track(pool: object) -> str:
    """The track of a logged pool name: ``iris__canary`` (the shared router names pools per model) -> ``canary``."""
    return str(pool or "").rsplit("__", 1)[-1]


def _failed(status: str) -> bool:
    return not status.isdigit() or int(status) >= 500


def _addresses(canary_address: str | Collection[str]) -> frozenset[str]:
    return frozenset([canary_address] if isinstance(canary_address, str) else canary_address)


def parse_line(line: str, canary_address: str | Collection[str]) -> list[RouterAttempt]:
    """The canary attempts of one access-log line (none for other paths or upstreams).

    ``canary_address``: the canary's upstream address, or the addresses of all its replicas.
    """
    canary = _addresses(canary_address)
    try:
        entry = json.loads(line)
    except ValueError:
        return []
    if entry.get("uri") != PREDICT_ENDPOINT or not entry.get("addr"):
        return []
    addresses = [a.strip() for a in str(entry["addr"]).split(",")]
    statuses = [s.strip() for s in str(entry.get("ustatus", "")).split(",")]
    timings = [s.strip() for s in str(entry.get("urt", "")).split(",")]
    attempts = []
    if pool_track(entry.get("pool")) == CANARY_POOL and not canary.intersection(addresses):
        return [RouterAttempt(at=float(entry.get("t", 0.0)), failed=True, seconds=None)]
    for index, address in enumerate(addresses):
        if address not in canary:
            continue
        status = statuses[index] if index < len(statuses) else ""
        timing = timings[index] if index < len(timings) else ""
        try:
            seconds: float | None = float(timing)
        except ValueError:
            seconds = None
        attempts.append(RouterAttempt(at=float(entry.get("t", 0.0)), failed=_failed(status), seconds=seconds))
    return attempts


class RouterLogReader:
    """Reads the access log incrementally from an offset."""

    def __init__(self, path: Path, canary_address: str | Collection[str], offset: int | None = None) -> None:
        self.path = path
        self.canary_address = _addresses(canary_address)
        self.offset = self._size() if offset is None else offset
        self._partial = b""

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def _new_lines(self) -> list[str]:
        size = self._size()
        if size < self.offset:  # rotated or truncated
            self.offset, self._partial = 0, b""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return []
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next call
        return [raw.decode(errors="replace") for raw in lines]

    def read_new(self) -> list[RouterAttempt]:
        """Canary ``/predict`` attempts logged since the last call."""
        attempts: list[RouterAttempt] = []
        for line in self._new_lines():
            attempts += parse_line(line, self.canary_address)
        return attempts

    def latest_contact(self) -> float | None:
        """When the newest request of any path that reached the canary finished (since the last call)."""
        latest = None
        for line in self._new_lines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if self.canary_address.intersection(str(entry.get("addr", "")).split(", ")):
                latest = max(latest or 0.0, float(entry.get("t", 0.0)))
        return latest

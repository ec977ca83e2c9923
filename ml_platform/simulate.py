"""Traffic simulator: labelled requests through the public port, with feedback, counting every failure.

    python -m ml_platform.simulate --model wine --rate 20 --duration 60

Traffic goes to one model: ``/models/<model>/predict`` and ``/models/<model>/feedback`` on
the public port (``--model`` default: ``ML_PLATFORM_MODEL``, else the catalog's default model;
``--url`` overrides the model's base URL). Rows come from the dataset's bundled CSV (the spec's ``bootstrap_file``);
each request sends one row as ``records`` and, when answered, posts the true
label to ``/feedback`` with the answer's ``feedback_token`` (the receipt the
server requires) and ``X-ML-Track`` set to the track that answered (so the
router pins the feedback to the process that holds the prediction).
``--shift S`` sends drifted rows instead (``--features a,b`` to choose which move, default every
numeric feature; ``--drift-share P`` for a mix, a share P of the requests drifted): the rows of
:func:`ml_platform.monitoring.generate.drifted_rows`, numeric features moved by S standard
deviations (clipped to the spec's ranges), categorical ones rotated, true labels kept for feedback.
Ctrl-C (or SIGTERM) stops the clients and still prints the counts so far (exit code 130).
``TrafficSimulator`` is the same thing as a context manager for tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from ml_platform.catalog import get_model
from ml_platform.spec import DatasetSpec

MAX_RECORDED_FAILURES = 50


@dataclass
class SimulationReport:
    """Counts of one simulation run."""

    predictions_ok: int = 0
    predictions_failed: int = 0
    feedback_ok: int = 0
    feedback_failed: int = 0
    correct: int = 0
    by_track: Counter[str] = field(default_factory=Counter)
    by_version: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return self.predictions_ok + self.predictions_failed

    def p95_ms(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(int(0.95 * len(ordered)), len(ordered) - 1)] * 1000

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "predictions_ok": self.predictions_ok,
            "predictions_failed": self.predictions_failed,
            "feedback_ok": self.feedback_ok,
            "feedback_failed": self.feedback_failed,
            "accuracy": round(self.correct / self.predictions_ok, 4) if self.predictions_ok else None,
            "client_p95_ms": None if self.p95_ms() is None else round(self.p95_ms() or 0.0, 1),
            "by_track": dict(self.by_track),
            "by_version": dict(self.by_version),
            "failures": self.failures[:10],
        }

    def summary(self) -> str:
        d = self.as_dict()
        lines = [
            f"{d['predictions_ok'] + d['predictions_failed']} predictions in {d['seconds']}s: "
            f"{d['predictions_ok']} ok, {d['predictions_failed']} failed; "
            f"feedback {d['feedback_ok']} ok, {d['feedback_failed']} failed",
            f"accuracy {d['accuracy']}, client p95 {d['client_p95_ms']} ms",
            f"by track {d['by_track']}, by version {d['by_version']}",
        ]
        lines += [f"failure: {f}" for f in d["failures"]]
        return "\n".join(lines)


def labelled_rows(spec: DatasetSpec) -> list[tuple[dict[str, Any], Any]]:
    """(record, true label) pairs from the dataset's bundled CSV."""
    import csv

    path = spec.bootstrap_path()
    if path is None or not path.exists():
        raise ValueError(f"dataset {spec.name} has no bundled CSV to simulate traffic from")
    numeric = set(spec.numeric_features)
    classes = {str(c): c for c in spec.target.classes}
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            record = {n: (float(raw[n]) if n in numeric else raw[n]) for n in spec.feature_names}
            rows.append((record, classes.get(raw[spec.target.name], raw[spec.target.name])))
    return rows


def drifted_labelled_rows(
    spec: DatasetSpec, shift: float, features: list[str] | None, share: float, seed: int = 0
) -> list[tuple[dict[str, Any], Any]]:
    """(record, true label) pairs where a ``share`` of rows are drifted by ``shift`` (see ``drifted_rows``)."""
    from ml_platform.monitoring.generate import drifted_rows

    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the drift share must be between 0 and 1, got {share}")
    unknown = sorted(set(features or []) - set(spec.feature_names))
    if unknown:
        raise ValueError(f"not features of {spec.name}: {unknown} (features: {spec.feature_names})")
    normal = labelled_rows(spec)
    count = max(len(normal), 1000)
    moved = round(count * share)
    frame = drifted_rows(spec, moved, shift, features=features or None, seed=seed) if moved else None
    numeric = set(spec.numeric_features)
    classes = {str(c): c for c in spec.target.classes}
    drifted = []
    for raw in frame.to_dict(orient="records") if frame is not None else []:
        record = {n: (float(raw[n]) if n in numeric else str(raw[n])) for n in spec.feature_names}
        label = raw[spec.target.name]
        drifted.append((record, classes.get(str(label), label)))
    rng = random.Random(seed)
    rows = drifted + [rng.choice(normal) for _ in range(count - moved)]
    rng.shuffle(rows)
    return rows


class TrafficSimulator:
    """Background clients sending labelled predictions at ``rate`` per second, plus feedback."""

    def __init__(
        self,
        url: str,
        *,
        rate: float = 20.0,
        concurrency: int = 4,
        feedback: bool = True,
        spec: DatasetSpec | None = None,
        seed: int = 0,
        timeout: float = 30.0,
        rows: list[tuple[dict[str, Any], Any]] | None = None,
    ) -> None:
        """``rows``: the (record, label) pairs to cycle through (default: the dataset's bundled rows)."""
        self.url = url.rstrip("/")
        self.rate = rate
        self.concurrency = max(1, concurrency)
        self.feedback = feedback
        self.timeout = timeout
        rows = list(rows) if rows is not None else labelled_rows(spec or get_model().spec)
        random.Random(seed).shuffle(rows)
        self._rows = itertools.cycle(rows)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.report = SimulationReport()
        self._started = 0.0

    def _next_row(self) -> tuple[dict[str, Any], Any]:
        with self._lock:
            return next(self._rows)

    def _fail(self, kind: str, detail: str) -> None:
        with self._lock:
            if kind == "prediction":
                self.report.predictions_failed += 1
            else:
                self.report.feedback_failed += 1
            if len(self.report.failures) < MAX_RECORDED_FAILURES:
                self.report.failures.append(f"{time.strftime('%H:%M:%S')} {kind}: {detail}"[:300])

    def _one(self, client: httpx.Client) -> None:
        record, label = self._next_row()
        request_id = f"sim-{uuid.uuid4().hex}"
        started = time.perf_counter()
        try:
            response = client.post("/predict", json={"records": [record]}, headers={"X-Request-ID": request_id})
        except httpx.HTTPError as exc:
            self._fail("prediction", repr(exc))
            return
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            self._fail("prediction", f"{response.status_code} {response.text[:200]}")
            return
        body = response.json()
        track, version = str(body.get("track")), str(body.get("model_version"))
        predicted = (body.get("predictions") or [None])[0]
        with self._lock:
            report = self.report
            report.predictions_ok += 1
            report.by_track[track] += 1
            report.by_version[version] += 1
            report.latencies.append(elapsed)
            report.correct += int(str(predicted) == str(label))
        if not self.feedback:
            return
        try:
            answer = client.post(
                "/feedback",
                json={
                    "request_id": body.get("request_id", request_id),
                    "feedback_token": body.get("feedback_token"),
                    "labels": [label],
                },
                headers={"X-ML-Track": track, "X-Request-ID": request_id},
            )
        except httpx.HTTPError as exc:
            self._fail("feedback", repr(exc))
            return
        if answer.status_code != 200:
            self._fail("feedback", f"{answer.status_code} {answer.text[:200]} (track {track})")
            return
        with self._lock:
            self.report.feedback_ok += 1

    def _worker(self, offset: float) -> None:
        interval = self.concurrency / self.rate
        next_at = time.monotonic() + offset
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_at = max(next_at + interval, time.monotonic() - interval)
                self._one(client)

    def start(self) -> TrafficSimulator:
        self._started = time.monotonic()
        interval = self.concurrency / self.rate
        self._threads = [
            threading.Thread(target=self._worker, args=(i * interval / self.concurrency,), daemon=True, name=f"sim-{i}")
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> SimulationReport:
        """Stop the clients (each finishes its request in flight) and return the counts."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        if self._started:
            self.report.seconds = time.monotonic() - self._started
        return self.report

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.report.as_dict()

    def run(self, seconds: float) -> SimulationReport:
        self.start()
        try:
            time.sleep(seconds)
        finally:
            report = self.stop()
        return report

    def __enter__(self) -> TrafficSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_url(model: str | None = None) -> str:
    """``model``'s URL on the local router: ``http://127.0.0.1:<port>/models/<model>``.

    The port is the one the shared nginx runs on (from the router's record), else
    ``DEPLOY_PUBLIC_PORT``, else 8080.
    """
    import os

    from ml_platform.deployment.router import ROUTER_DIRNAME
    from ml_platform.settings import platform_paths

    name = get_model(model).name
    port = int(os.environ.get("DEPLOY_PUBLIC_PORT", "8080"))
    try:
        recorded = json.loads((platform_paths().deployments_root / ROUTER_DIRNAME / "router.json").read_text())
        port = int(recorded["public_port"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return f"http://127.0.0.1:{port}/models/{name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_platform.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the model (default: ML_PLATFORM_MODEL, else the catalog's default model)")
    parser.add_argument("--url", help="the model's base URL (default: http://127.0.0.1:<router port>/models/<model>)")
    parser.add_argument("--rate", type=float, default=20.0, help="predictions per second (default 20)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--no-feedback", action="store_true", help="do not post the true labels")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--shift", type=float, default=0.0, help="send drifted rows: move features by this many std devs (default 0)"
    )
    parser.add_argument("--features", help="comma-separated features to shift (default: every numeric feature)")
    parser.add_argument(
        "--drift-share", type=float, default=1.0, help="share of requests drifted when --shift is set (default 1)"
    )
    args = parser.parse_args(argv)
    from ml_platform.catalog import CatalogError

    try:
        entry = get_model(args.model)
    except CatalogError as exc:
        parser.error(str(exc))
    rows = None
    if args.shift:
        features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
        try:
            rows = drifted_labelled_rows(entry.spec, args.shift, features, args.drift_share)
        except ValueError as exc:
            parser.error(str(exc))
    simulator = TrafficSimulator(
        args.url or default_url(entry.name),
        rate=args.rate,
        concurrency=args.concurrency,
        feedback=not args.no_feedback,
        spec=entry.spec,
        rows=rows,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    interrupted = False
    try:
        report = simulator.run(args.duration)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: run() has stopped the clients; the counts still print
        interrupted = True
        report = simulator.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if interrupted:
        print(f"interrupted after {report.seconds:.1f}s; counts so far:", file=sys.stderr)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.summary(), flush=True)
    if interrupted:
        return 130
    return 1 if report.predictions_failed else 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

"""One model's local deployment state file and lock, under ``<home>/deployments/<model>/``.

``state.json`` records which serving processes run (pid, port, version, admin
token), the router's port and the canary weight, so a restarted Dagster (or
the CLI) finds the deployment it left. ``lock`` serialises operations: one
rollout, promotion, manual rollback or stop at a time per model; it records
its holder so a refused caller can say who holds it, and a lock whose holder
died is detected as stale.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class DeploymentBusy(RuntimeError):
    """Another operation holds the deployment lock."""

    def __init__(self, message: str, holder: LockHolder | None = None) -> None:
        super().__init__(message)
        self.holder = holder


def process_start_token(pid: int) -> str:
    """The kernel's start time of ``pid`` (``/proc/<pid>/stat`` field 22): tells a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass(frozen=True)
class LockHolder:
    """Who holds the deployment lock: process, host, what it does, since when."""

    pid: int
    host: str
    operation: str
    since: float
    start_token: str = ""

    @classmethod
    def me(cls, operation: str) -> LockHolder:
        pid = os.getpid()
        return cls(pid, socket.gethostname(), operation or "an operation", time.time(), process_start_token(pid))

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        try:
            raw = json.loads(text)
            return cls(
                int(raw["pid"]),
                str(raw["host"]),
                str(raw["operation"]),
                float(raw["since"]),
                raw.get("start_token", ""),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def dump(self) -> str:
        return json.dumps(asdict(self))

    def alive(self) -> bool | None:
        """False when the holder process is gone (or its pid was reused); None when it runs on another host."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        token = process_start_token(self.pid)
        return not (self.start_token and token and token != self.start_token)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        age = max(0.0, time.time() - self.since)
        return f"{self.operation} (pid {self.pid} on {self.host}, since {when}, {age:.0f}s ago)"


@dataclass
class ProcessRecord:
    """One serving process started by the local deployer."""

    track: str
    model_uri: str
    version: str
    pid: int
    port: int
    upstream_port: int  # where the router sends this track's traffic (normally ``port``)
    log_path: str
    started_at: float
    admin_token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class DeploymentState:
    """Everything needed to find and drive a local deployment again."""

    model_name: str
    public_port: int
    generation: int = 0
    canary_weight: int = 0
    stable: ProcessRecord | None = None  # the first replica of each track
    canary: ProcessRecord | None = None
    stable_peers: list[ProcessRecord] = field(default_factory=list)  # the track's other replicas
    canary_peers: list[ProcessRecord] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    # What this model contributes to the shared router (ports, weight, pinning, generation); None: not routed.
    route: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DeploymentState:
        def record(value: dict[str, Any] | None) -> ProcessRecord | None:
            return ProcessRecord(**value) if value else None

        return cls(
            model_name=raw["model_name"],
            public_port=int(raw["public_port"]),
            generation=int(raw.get("generation", 0)),
            canary_weight=int(raw.get("canary_weight", 0)),
            stable=record(raw.get("stable")),
            canary=record(raw.get("canary")),
            stable_peers=[ProcessRecord(**r) for r in raw.get("stable_peers") or []],
            canary_peers=[ProcessRecord(**r) for r in raw.get("canary_peers") or []],
            history=list(raw.get("history") or []),
            route=dict(raw["route"]) if raw.get("route") else None,
        )

    def replicas(self, track: str) -> list[ProcessRecord]:
        """Every serving process of ``track`` (first replica first); empty when the track does not run."""
        first = self.stable if track == "stable" else self.canary
        if first is None:
            return []
        return [first, *(self.stable_peers if track == "stable" else self.canary_peers)]

    def set_replicas(self, track: str, records: list[ProcessRecord]) -> None:
        """Record ``track``'s serving processes (an empty list: the track does not run)."""
        first, peers = (records[0], list(records[1:])) if records else (None, [])
        if track == "stable":
            self.stable, self.stable_peers = first, peers
        else:
            self.canary, self.canary_peers = first, peers

    def note(self, event: str, **details: Any) -> None:
        """Append to the (bounded) event history kept in the state file."""
        self.history.append({"at": round(time.time(), 3), "event": event, **details})
        del self.history[:-50]


class StateStore:
    """Reads and atomically writes ``state.json``; holds the operation lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "state.json"
        self.lock_path = folder / "lock"

    def load(self) -> DeploymentState | None:
        try:
            return DeploymentState.from_dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def save(self, state: DeploymentState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        # The file holds the stable process's admin token: owner-only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state.to_dict(), handle, indent=2)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def holder(self) -> LockHolder | None:
        """Who holds the lock now (None when nobody does)."""
        if not self.lock_path.exists():
            return None
        with open(self.lock_path, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                return LockHolder.parse(handle.read()) or LockHolder(0, "?", "an unrecorded holder", time.time())
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return None

    def break_lock(self) -> None:
        """Put a fresh lock file in place: whoever holds the old one no longer excludes anybody."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fresh = self.lock_path.with_name(f"lock.{os.getpid()}.new")
        fresh.touch()
        os.replace(fresh, self.lock_path)

    @contextmanager
    def lock(
        self, timeout: float = 0.0, *, holder: str = "", force: bool = False, log: Callable[[str], None] | None = None
    ) -> Iterator[None]:
        """Exclusive lock; waits up to ``timeout`` seconds, then raises :class:`DeploymentBusy`.

        The lock is an ``flock`` on ``lock``, which records its holder (pid,
        host, ``holder`` text, since when). A lock whose recorded holder process
        is gone is *stale* (a forked child kept the descriptor) and is broken;
        ``force`` breaks a live one too. Breaking replaces the file, so the old
        holder keeps running but excludes nobody: say so to the user.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        note = log or (lambda message: None)
        deadline = time.monotonic() + timeout
        while True:
            handle = open(self.lock_path, "a+")  # noqa: SIM115 (kept open for as long as the lock is held)
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                current = LockHolder.parse(handle.read())
                handle.close()
                if current is not None and current.alive() is False:
                    note(f"breaking a stale deployment lock: its holder is gone: {current.describe()}")
                    self.break_lock()
                    continue
                if force:
                    note(
                        f"breaking the deployment lock held by {current.describe() if current else 'an unknown holder'}"
                    )
                    self.break_lock()
                    continue
                if time.monotonic() >= deadline:
                    who = current.describe() if current else "a holder that recorded nothing"
                    raise DeploymentBusy(f"the deployment of {self.folder.name} is locked by {who}", current) from None
                time.sleep(0.2)
                continue
            try:  # the file may have been replaced (a lock broken) between open and flock
                same = os.fstat(handle.fileno()).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                handle.close()
                continue
            break
        with handle:
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(LockHolder.me(holder).dump())
                handle.flush()
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                handle.flush()
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

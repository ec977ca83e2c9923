"""The local deployment's state file and lock, under ``<home>/deployments/<model>/``.

``state.json`` records which serving processes run (pid, port, version, admin
token), the router's port and the canary weight, so a restarted Dagster (or
the CLI) finds the deployment it left. ``lock`` serialises operations: one
rollout, promotion or manual rollback at a time per model.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class DeploymentBusy(RuntimeError):
    """Another operation holds the deployment lock."""


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
    stable: ProcessRecord | None = None
    canary: ProcessRecord | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

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
            history=list(raw.get("history") or []),
        )

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

    @contextmanager
    def lock(self, timeout: float = 0.0) -> Iterator[None]:
        """Exclusive lock; waits up to ``timeout`` seconds, then raises :class:`DeploymentBusy`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = self.lock_path.read_text().strip() or "another process"
                        raise DeploymentBusy(f"the deployment of {self.folder.name} is busy ({holder})") from None
                    time.sleep(0.2)
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
                handle.flush()
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                handle.flush()
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

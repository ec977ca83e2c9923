"""State shared between the API process and the inference workers, as small files.

One folder per running server (the *runtime dir*) holds:

- ``desired_model.json``: the version every worker should serve. Only the API
  side writes it (start-up, refresher, admin reload), atomically via rename.
  Workers ``stat`` it between batches (at most every 0.1 s) and hot-swap when
  its inode changes.
- ``workers/<id>.json``: what each worker has loaded, so ``/health`` can tell
  "all workers on the desired version" from "swap in progress" or "load failed".
- ``refresh_status.json``: the last registry refresh of any API server process
  (time, error, reachability), so ``/health`` says the same whichever process answers.
- ``stopping``: present once the main process is stopping the server (see
  :mod:`serving.supervision`).
- ``models/``: the downloaded model versions (see :mod:`serving.registry`).
- ``prometheus/``: the multiprocess metric files, unless PROMETHEUS_MULTIPROC_DIR names
  another folder.

Files rather than a multiprocessing manager keep workers independent of the
API process: a marker can be read after a restart, and is easy to inspect.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.registry import ModelBundle, write_json_atomic


@dataclass(frozen=True)
class RuntimeLayout:
    """Paths inside the runtime dir of one server."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / "desired_model.json"

    @property
    def refresh_status(self) -> Path:
        """The outcome of the last registry refresh by any API server process (``/health``'s ``mlflow`` block)."""
        return self.root / "refresh_status.json"

    @property
    def stop_marker(self) -> Path:
        """Created by the main process when the server stops: workers that were signalled exit when idle."""
        return self.root / "stopping"

    @property
    def workers_dir(self) -> Path:
        return self.root / "workers"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def default_prometheus_dir(self) -> Path:
        return self.root / "prometheus"

    def worker_status_path(self, worker_id: int | str) -> Path:
        return self.workers_dir / f"worker-{worker_id}.json"

    def create(self) -> RuntimeLayout:
        for folder in (self.root, self.workers_dir, self.models_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def publish_desired_model(layout: RuntimeLayout, bundle: ModelBundle) -> None:
    """Tell every worker which version to serve (atomic replace: a new inode each time)."""
    write_json_atomic(layout.marker, {**bundle.to_dict(), "published_at": time.time()})


def read_desired_model(layout: RuntimeLayout) -> ModelBundle:
    return ModelBundle.from_dict(json.loads(layout.marker.read_text()))


class MarkerWatcher:
    """Cheap change detection on the desired-model marker (at most one ``stat`` per ``interval``)."""

    def __init__(self, layout: RuntimeLayout, interval: float = 0.1) -> None:
        self.layout = layout
        self.interval = interval
        self._seen: tuple[int, int] | None = None
        self._next_check = 0.0

    def poll(self) -> ModelBundle | None:
        """The marker's bundle if it changed since the last look, else None."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + self.interval
        try:
            st = os.stat(self.layout.marker)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns)
        if key == self._seen:
            return None
        self._seen = key
        return read_desired_model(self.layout)


def write_worker_status(layout: RuntimeLayout, worker_id: int | str, status: dict[str, Any]) -> None:
    write_json_atomic(layout.worker_status_path(worker_id), {**status, "worker_id": str(worker_id), "pid": os.getpid()})


def write_inline_status(layout: RuntimeLayout, status: dict[str, Any]) -> None:
    """What one API server process's own model serves (``inline-<pid>.json``), for the ``/health`` of every process."""
    write_json_atomic(layout.workers_dir / f"inline-{os.getpid()}.json", {**status, "pid": os.getpid()})


def read_inline_statuses(layout: RuntimeLayout) -> list[dict[str, Any]]:
    """The models of every API server process that loaded one, sorted by pid."""
    statuses = []
    for path in layout.workers_dir.glob("inline-*.json"):
        try:
            statuses.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(statuses, key=lambda s: int(s.get("pid") or 0))


def read_worker_statuses(layout: RuntimeLayout) -> list[dict[str, Any]]:
    """Status of every worker that has reported, sorted by worker id."""
    statuses = []
    for path in sorted(layout.workers_dir.glob("worker-*.json")):
        try:
            statuses.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return statuses


def prepare_multiproc_dir(path: Path) -> Path:
    """Create ``path``, empty it of metric files, and point prometheus_client at it.

    Must run before ``prometheus_client`` is imported in this process (it picks
    its storage at import) and before any worker is spawned (workers inherit
    the environment). Earlier runs' files would otherwise leak into the sums.
    """
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.glob("*.db"):
        entry.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path

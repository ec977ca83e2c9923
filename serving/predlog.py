"""The prediction log: JSON Lines, one object per request, date-partitioned, written off the request path.

Layout (documented in docs/serving.md; the drift and canary code reads it)::

    <PREDICTION_LOG_DIR>/date=YYYY-MM-DD/predictions-<track>-<pid>.jsonl
    <PREDICTION_LOG_DIR>/date=YYYY-MM-DD/feedback-<track>-<pid>.jsonl

Each process appends only to its own files (the pid is in the name), so no
locking is needed. Requests hand a zero-argument render callable to a bounded
queue (if the disk cannot keep up, submissions are dropped and counted,
never waited for); a daemon thread renders, writes and flushes what is pending
every ``flush_interval`` seconds (0.25), and on close.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

log = logging.getLogger(__name__)

RenderFn = Callable[[], tuple[str, bytes]]


def utc_timestamp(epoch: float) -> tuple[str, str]:
    """``(YYYY-MM-DD, ISO 8601 UTC with microseconds and Z)`` for a Unix time."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonlWriter:
    """Appends rendered JSON lines to ``date=<day>/<stem>-<track>-<pid>.jsonl`` from a background thread.

    ``submit`` only appends a render callable to a deque (no lock, no thread
    wake-up on the request path); the thread wakes every ``flush_interval``
    seconds, renders and writes everything pending, and flushes.
    """

    def __init__(
        self,
        root: Path,
        stem: str,
        track: str,
        *,
        max_pending: int = 10_000,
        flush_interval: float = 0.25,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self.stem = stem
        self.track = track
        self.max_pending = max_pending
        self.flush_interval = flush_interval
        self._pending: deque[RenderFn] = deque()
        self._on_drop = on_drop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._files: dict[str, IO[bytes]] = {}
        self._pid = os.getpid()

    def path_for(self, day: str) -> Path:
        return self.root / f"date={day}" / f"{self.stem}-{self.track}-{self._pid}.jsonl"

    def start(self) -> JsonlWriter:
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.stem}-log-writer", daemon=True)
        self._thread.start()
        return self

    def submit(self, render: RenderFn) -> bool:
        """Queue rows for writing; False (and counted) when too much is already pending."""
        if len(self._pending) >= self.max_pending:
            if self._on_drop is not None:
                self._on_drop()
            return False
        self._pending.append(render)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write everything submitted so far, then stop the thread."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None

    def _handle(self, day: str) -> IO[bytes]:
        handle = self._files.get(day)
        if handle is None:
            for old_day in list(self._files):  # a new day: yesterday's file is complete
                self._files.pop(old_day).close()
            path = self.path_for(day)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = self._files[day] = open(path, "ab", buffering=1 << 20)  # noqa: SIM115 - kept open across writes
        return handle

    def _drain(self) -> None:
        while self._pending:
            render = self._pending.popleft()
            try:
                day, data = render()
                self._handle(day).write(data)
            except Exception:
                log.exception("could not write %s log rows", self.stem)
        for handle in self._files.values():
            handle.flush()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.flush_interval):
                self._drain()
            self._drain()
        finally:
            for handle in self._files.values():
                handle.close()
            self._files.clear()


class PredictionLogFormat:
    """Renders one ``/predict`` request as one JSON line, its rows as columns.

    One line per request, not per row: per row, the request's id, time, model
    and track would be repeated for every row, and a 1,000-row request would
    cost 1,000 formatted lines (about 1.5 ms of worker CPU and 330 kB) instead
    of one ``orjson`` call over numpy columns (about 0.25 ms and 33 kB).
    Readers explode the columns back into rows (see
    :mod:`ml_platform.monitoring.logs`).
    """

    def __init__(self, feature_names: Sequence[str], class_values: Sequence[Any], class_labels: Sequence[str]) -> None:
        self.feature_names = list(feature_names)
        self.class_labels = list(class_labels)
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in class_values)
        self._classes: np.ndarray | None = np.asarray(class_values) if numeric else None
        self._class_values = list(class_values)

    def _predictions(self, class_index: np.ndarray) -> np.ndarray | list[Any]:
        if self._classes is not None:
            return self._classes[class_index]
        return [self._class_values[i] for i in class_index.tolist()]

    def _features(self, rows: np.ndarray | list[tuple[Any, ...]]) -> dict[str, Any]:
        if isinstance(rows, np.ndarray):
            columns: Any = np.ascontiguousarray(rows.T)
        else:
            columns = list(zip(*rows, strict=True)) if rows else [() for _ in self.feature_names]
        return dict(zip(self.feature_names, columns, strict=True))

    def _probabilities(self, probabilities: np.ndarray | None) -> dict[str, np.ndarray] | None:
        if probabilities is None:
            return None
        columns = np.ascontiguousarray(probabilities.T, dtype=np.float64)
        return dict(zip(self.class_labels, columns, strict=True))

    def render(
        self,
        *,
        request_id: str,
        received_at: float,
        latency_ms: float,
        model_name: str,
        model_version: str,
        track: str,
        rows: np.ndarray | list[tuple[Any, ...]],
        class_index: np.ndarray,
        probabilities: np.ndarray | None,
    ) -> tuple[str, bytes]:
        """``(day, line)`` for one request; ``probabilities`` is the (rows, classes) matrix or None."""
        day, stamp = utc_timestamp(received_at)
        record = {
            "event": "prediction",
            "request_id": request_id,
            "timestamp": stamp,
            "model_name": model_name,
            "model_version": model_version,
            "track": track,
            "rows": len(class_index),
            "features": self._features(rows),
            "predictions": self._predictions(class_index),
            "probabilities": self._probabilities(probabilities),
            "latency_ms": round(latency_ms, 3),
        }
        return day, orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


def render_feedback(
    *,
    request_id: str,
    rows: Sequence[int],
    labels: Sequence[Any],
    predictions: Sequence[Any],
    model_version: str,
    track: str,
    at: float,
) -> tuple[str, bytes]:
    """Feedback events, one JSON line per labelled row."""
    day, stamp = utc_timestamp(at)
    lines = [
        orjson.dumps(
            {
                "event": "feedback",
                "request_id": request_id,
                "row": row,
                "timestamp": stamp,
                "label": label,
                "prediction": prediction,
                "correct": label == prediction,
                "model_version": model_version,
                "track": track,
            }
        )
        + b"\n"
        for row, label, prediction in zip(rows, labels, predictions, strict=True)
    ]
    return day, b"".join(lines)

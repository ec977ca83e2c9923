"""The prediction log: JSON Lines, one object per row, date-partitioned, written off the request path.

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

from serving.encoding import matrix_objects

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


def _literal(value: Any) -> bytes:
    """A JSON literal safe to embed in a ``%`` template."""
    return orjson.dumps(value).replace(b"%", b"%%")


class PredictionLogFormat:
    """Renders one prediction request as JSON lines (one per row), fast for numeric specs."""

    def __init__(self, feature_names: Sequence[str], class_values: Sequence[Any]) -> None:
        self.feature_names = list(feature_names)
        self._prediction_json = [orjson.dumps(v) for v in class_values]

    def _features(self, rows: np.ndarray | list[tuple[Any, ...]]) -> list[bytes]:
        if isinstance(rows, np.ndarray):
            return matrix_objects(self.feature_names, rows)
        return [orjson.dumps(dict(zip(self.feature_names, row, strict=True))) for row in rows]

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
        probability_objects: list[bytes] | None,
    ) -> tuple[str, bytes]:
        """``(day, lines)``; ``probability_objects`` are the rows' ``{"<label>": p}`` JSON (None: no probabilities)."""
        day, stamp = utc_timestamp(received_at)
        template = (
            b'{"event":"prediction","request_id":'
            + _literal(request_id)
            + b',"row":%d,"timestamp":'
            + _literal(stamp)
            + b',"model_name":'
            + _literal(model_name)
            + b',"model_version":'
            + _literal(model_version)
            + b',"track":'
            + _literal(track)
            + b',"features":%s,"prediction":%s,"probabilities":%s,"latency_ms":'
            + _literal(round(latency_ms, 3))
            + b"}\n"
        )
        features = self._features(rows)
        predictions = [self._prediction_json[i] for i in class_index.tolist()]
        probabilities = probability_objects or [b"null"] * len(predictions)
        lines = [template % (i, features[i], predictions[i], probabilities[i]) for i in range(len(predictions))]
        return day, b"".join(lines)


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

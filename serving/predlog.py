"""The prediction log: JSON Lines, one object per request, date-partitioned, written off the request path.

Layout (documented in docs/serving.md; the drift and canary code reads it)::

    <PREDICTION_LOG_DIR>/date=YYYY-MM-DD/predictions-<track>-<pid>.jsonl
    <PREDICTION_LOG_DIR>/date=YYYY-MM-DD/feedback-<track>-<pid>.jsonl

``PREDICTION_LOG_DIR`` is one model's folder (default
``<platform home>/logs/predictions/<model>``), and every line names its
platform model (``"model": "iris"``), so readers can refuse lines of another
model even when folders get mixed up.

Each process appends only to its own files (the pid is in the name), so no
locking is needed. Requests hand a zero-argument render callable to a bounded
queue (if the disk cannot keep up, submissions are dropped and counted,
never waited for); a daemon thread renders what is pending every
``flush_interval`` seconds (0.25) and appends it with one ``write`` per file,
and on close.

A failed write (disk full, quota, I/O error) never stops the thread: the
file is cut back to its last complete line, the lines are dropped and
counted (``ml_serving_log_dropped_total``, ``ml_serving_log_write_errors_total``),
``ml_serving_log_writer_failing`` holds the errno so ``/health`` reports
``degraded``, and the next cycle reopens the file and writes again: logging
resumes by itself once the fault is gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

log = logging.getLogger(__name__)

RenderFn = Callable[[], tuple[str, bytes]]


_last_second: list[Any] = [None, "", ""]  # second, day, "YYYY-MM-DDTHH:MM:SS" (formatting is most of the cost)


def utc_timestamp(epoch: float) -> tuple[str, str]:
    """``(YYYY-MM-DD, ISO 8601 UTC with microseconds and Z)`` for a Unix time."""
    moment = datetime.fromtimestamp(epoch, UTC)
    second = moment.replace(microsecond=0)
    cached = _last_second
    if cached[0] != second:  # one writer thread per file; a race only recomputes the same strings
        cached[:] = [second, moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m-%dT%H:%M:%S")]
    return cached[1], f"{cached[2]}.{moment.microsecond:06d}Z"


EVENTS = {"predictions": "prediction"}  # file stem -> metric label (the feedback stem is its own label)


class JsonlWriter:
    """Appends rendered JSON lines to ``date=<day>/<stem>-<track>-<pid>.jsonl`` from a background thread.

    ``model`` (the platform model name) only labels the writer's metrics; the
    lines name their model themselves.

    ``submit`` only appends a render callable to a deque (no lock, no thread
    wake-up on the request path); the thread wakes every ``flush_interval``
    seconds, renders everything pending and writes it.
    """

    def __init__(
        self,
        root: Path,
        stem: str,
        track: str,
        *,
        model: str,
        max_pending: int = 10_000,
        flush_interval: float = 0.25,
        on_drop: Callable[..., object] | None = None,
    ) -> None:
        self.root = root
        self.stem = stem
        self.track = track
        self.model = model
        self.max_pending = max_pending
        self.flush_interval = flush_interval
        self._pending: deque[RenderFn] = deque()
        self._on_drop = on_drop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._files: dict[str, int] = {}  # day -> fd opened O_APPEND
        self._pid = os.getpid()
        self.failing_errno = 0  # errno of the last failed write; 0 once a write succeeds
        self.write_errors = 0
        self.dropped = 0  # submissions lost to write errors
        self._metrics: tuple[Any, Any] | None = None

    def path_for(self, day: str) -> Path:
        return self.root / f"date={day}" / f"{self.stem}-{self.track}-{self._pid}.jsonl"

    def start(self) -> JsonlWriter:
        from serving import metrics  # here, not at import: prometheus_client must see PROMETHEUS_MULTIPROC_DIR

        self._pid = os.getpid()
        event = EVENTS.get(self.stem, self.stem)
        self._metrics = (
            metrics.LOG_WRITE_ERRORS.labels(self.model, event, self.track),
            metrics.LOG_WRITER_FAILING.labels(self.model, event, self.track),
        )
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

    def _fd(self, day: str) -> int:
        fd = self._files.get(day)
        if fd is None:
            self._close_files()  # a new day: yesterday's file is complete
            path = self.path_for(day)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._files[day] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return fd

    def _close_files(self) -> None:
        for fd in self._files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()

    def _drain(self) -> None:
        by_day: dict[str, list[bytes]] = {}
        while self._pending:
            render = self._pending.popleft()
            try:
                day, data = render()
            except Exception:
                log.exception("could not render a %s log line", self.stem)
                continue
            by_day.setdefault(day, []).append(data)
        for day, lines in by_day.items():
            self._write(day, b"".join(lines), len(lines))

    def _write(self, day: str, data: bytes, count: int) -> None:
        """Append ``data`` whole, or not at all (a failed write is cut back to the last complete line)."""
        fd, size = None, None
        try:
            fd = self._fd(day)
            size = os.fstat(fd).st_size
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            if fd is not None and size is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
            self._close_files()  # reopened next cycle: the file or its folder may have been replaced
            self._failed(exc, count)
            return
        if self.failing_errno:
            log.warning(
                "%s log writable again after %d failed writes (%d submissions dropped)",
                self.stem,
                self.write_errors,
                self.dropped,
            )
            self._set_failing(0)

    def _failed(self, exc: OSError, count: int) -> None:
        code = exc.errno or errno.EIO
        if not self.failing_errno:
            log.error(
                "cannot write the %s log under %s: %s; dropping lines until it works again", self.stem, self.root, exc
            )
        self.write_errors += 1
        self.dropped += count
        if self._metrics is not None:
            self._metrics[0].inc()
        if self._on_drop is not None:
            self._on_drop(count)
        self._set_failing(code)

    def _set_failing(self, code: int) -> None:
        self.failing_errno = code
        if self._metrics is not None:
            self._metrics[1].set(code)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.flush_interval):
                self._drain_safely()
            self._drain_safely()
        finally:
            self._close_files()

    def _drain_safely(self) -> None:
        try:
            self._drain()
        except Exception:  # never let the writer thread die: the next cycle tries again
            log.exception("%s log writer cycle failed", self.stem)


class PredictionLogFormat:
    """Renders one ``/predict`` request as one JSON line, its rows as columns.

    One line per request, not per row: per row, the request's id, time, model
    and track would be repeated for every row, and a 1,000-row request would
    cost 1,000 formatted lines (about 1.5 ms of worker CPU and 330 kB) instead
    of one ``orjson`` call over numpy columns (about 0.25 ms and 33 kB).
    Readers explode the columns back into rows (see
    :mod:`ml_platform.monitoring.logs`).
    """

    def __init__(
        self, model: str, feature_names: Sequence[str], class_values: Sequence[Any], class_labels: Sequence[str]
    ) -> None:
        self.model = model  # the platform model name, constant per process
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
        traffic: str | None = None,
    ) -> tuple[str, bytes]:
        """``(day, line)`` for one request; ``probabilities`` is the (rows, classes) matrix or None."""
        day, stamp = utc_timestamp(received_at)
        if len(class_index) == 1 and isinstance(rows, np.ndarray):  # a single row: plain lists, no transposes
            index = int(class_index[0])
            values = rows[0].tolist()
            features: dict[str, Any] = {name: [v] for name, v in zip(self.feature_names, values, strict=True)}
            predictions: Any = [self._class_values[index]]
            probs: Any = (
                None
                if probabilities is None
                else {label: [p] for label, p in zip(self.class_labels, probabilities[0].tolist(), strict=True)}
            )
        else:
            features = self._features(rows)
            predictions = self._predictions(class_index)
            probs = self._probabilities(probabilities)
        record = {
            "event": "prediction",
            "model": self.model,
            "request_id": request_id,
            "timestamp": stamp,
            "model_name": model_name,
            "model_version": model_version,
            "track": track,
            "rows": len(class_index),
            "features": features,
            "predictions": predictions,
            "probabilities": probs,
            "latency_ms": round(latency_ms, 3),
        }
        if traffic is not None:  # absent for real traffic, to keep lines small
            record["traffic"] = traffic
        return day, orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


def render_feedback(
    *,
    model: str,
    request_id: str,
    rows: Sequence[int],
    labels: Sequence[Any],
    predictions: Sequence[Any],
    model_version: str,
    track: str,
    at: float,
) -> tuple[str, bytes]:
    """Feedback events, one JSON line per labelled row, each naming its platform ``model``."""
    day, stamp = utc_timestamp(at)
    lines = [
        orjson.dumps(
            {
                "event": "feedback",
                "model": model,
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

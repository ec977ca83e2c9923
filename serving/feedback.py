"""Bookkeeping for ground truth: recent predictions by request id, and live accuracy.

Lives in the API process. Predictions are computed in the workers, but every
answer passes back through the API process, which records the predicted class
indices here before responding (see :mod:`serving.routes`). So whichever worker
made a prediction, feedback for it finds it, without any shared store and
without extra work in the workers. Only the event-loop thread touches these
objects, so they need no locks.

Memory is bounded twice: at most ``max_requests`` request ids and at most
``max_rows`` predicted rows (class indices are stored as one uint16 per row).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

ROWS_PER_REQUEST_BUDGET = 10  # max_rows = this x max_requests


@dataclass
class CachedPrediction:
    """What a past prediction needs for feedback: its version, classes and which rows were labelled."""

    model_version: str
    class_index: np.ndarray
    labelled: np.ndarray  # bool per row

    @property
    def rows(self) -> int:
        return len(self.class_index)


class PredictionCache:
    """Recent predictions by request id, oldest evicted first."""

    def __init__(self, max_requests: int, max_rows: int | None = None) -> None:
        self.max_requests = max_requests
        self.max_rows = max_rows if max_rows is not None else max_requests * ROWS_PER_REQUEST_BUDGET
        self._entries: OrderedDict[str, CachedPrediction] = OrderedDict()
        self._rows = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, request_id: str, model_version: str, class_index: np.ndarray) -> None:
        """Remember a prediction (a reused request id replaces the earlier one)."""
        old = self._entries.pop(request_id, None)
        if old is not None:
            self._rows -= old.rows
        entry = CachedPrediction(model_version, class_index, np.zeros(len(class_index), dtype=bool))
        self._entries[request_id] = entry
        self._rows += entry.rows
        while self._entries and (len(self._entries) > self.max_requests or self._rows > self.max_rows):
            _, evicted = self._entries.popitem(last=False)
            self._rows -= evicted.rows

    def get(self, request_id: str) -> CachedPrediction | None:
        return self._entries.get(request_id)


class LiveAccuracy:
    """Correct / labelled predictions per model version since start-up."""

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}

    def record(self, model_version: str, correct: int, total: int) -> float:
        """Add outcomes; return the version's accuracy so far."""
        counts = self._counts.setdefault(model_version, [0, 0])
        counts[0] += correct
        counts[1] += total
        return counts[0] / counts[1]

    def get(self, model_version: str) -> float | None:
        counts = self._counts.get(model_version)
        return counts[0] / counts[1] if counts and counts[1] else None

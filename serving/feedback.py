"""Bookkeeping for ground truth: recent predictions by request id, and live accuracy.

Lives in the API process. Predictions are computed in the workers, but every
answer passes back through the API process, which records the predicted class
indices here before responding (see :mod:`serving.routes`). So whichever worker
made a prediction, feedback for it finds it, without any shared store. Only the event-loop thread touches these
objects, so they need no locks.

Memory is bounded twice: at most ``max_requests`` request ids and at most
``max_rows`` predicted rows (class indices are stored as one uint16 per row).

Feedback is authenticated by a **receipt**: every ``/predict`` answer carries
``feedback_token`` = ``v1.`` + base64url(HMAC-SHA256(key, message))[:128 bits],
where the message binds the platform model name, the registered model name,
version, track, request id and the predicted class indices (see :meth:`FeedbackSigner.message`). Workers sign
(they build the body); the API process verifies against the prediction it
recorded, so a receipt labels exactly one prediction, and only rows not yet
labelled count (a replay is 409). Nothing per request is stored for it: the
token is recomputed from the cached prediction.
"""

from __future__ import annotations

import base64
import hmac
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from serving.config import FEEDBACK_KEY_MIN_BYTES

ROWS_PER_REQUEST_BUDGET = 10  # max_rows = this x max_requests

TOKEN_VERSION = "v1"
MAC_BYTES = 16  # HMAC-SHA256 truncated to 128 bits (RFC 2104 allows >= half the hash length)
TOKEN_PATTERN = r"^v1\.[A-Za-z0-9_-]{22}$"
_SEPARATOR = b"\x00"  # appears in none of the fields: names, versions, tracks and request ids are printable
_TOKEN_PREFIX = TOKEN_VERSION.encode() + b"."


class FeedbackSigner:
    """Signs and verifies feedback receipts with one deployment-wide key.

    Picklable (it travels to the inference workers inside the LitAPI); its
    ``repr`` never shows the key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < FEEDBACK_KEY_MIN_BYTES:
            raise ValueError(f"a feedback signing key needs at least {FEEDBACK_KEY_MIN_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:
        return "FeedbackSigner(key=<hidden>)"

    @staticmethod
    def prefix(model: str, model_name: str, model_version: str, track: str) -> bytes:
        """The fixed part of every message of one served version (precomputed once per version).

        ``model`` is the platform model name (``MODEL_NAME``), ``model_name`` the registered one.
        """
        return _SEPARATOR.join(
            (TOKEN_VERSION.encode(), model.encode(), model_name.encode(), model_version.encode(), track.encode(), b"")
        )

    @staticmethod
    def message(prefix: bytes, request_id: str, class_index: np.ndarray) -> bytes:
        """``v1 NUL model NUL name NUL version NUL track NUL request_id NUL`` + class indices as LE uint16."""
        return b"".join((prefix, request_id.encode(), _SEPARATOR, np.asarray(class_index, dtype="<u2").tobytes()))

    def sign(self, prefix: bytes, request_id: str, class_index: np.ndarray) -> bytes:
        """The receipt for one prediction, ASCII (one HMAC over a few dozen bytes for a single row)."""
        mac = hmac.digest(self._key, self.message(prefix, request_id, class_index), "sha256")
        return _TOKEN_PREFIX + base64.urlsafe_b64encode(mac[:MAC_BYTES]).rstrip(b"=")

    def verify(self, token: str, prefix: bytes, request_id: str, class_index: np.ndarray) -> bool:
        """True when ``token`` is the receipt of exactly this prediction (constant-time comparison)."""
        return hmac.compare_digest(token.encode(), self.sign(prefix, request_id, class_index))


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

"""Ground truth for predictions: self-contained receipts, a replay ledger shared by replicas, live accuracy.

Feedback is authenticated by a **receipt**: every ``/predict`` answer carries
``feedback_token`` = ``v2.`` + base64url(payload) + ``.`` + base64url(HMAC-SHA256(key, message))[:128 bits]
where ``payload`` = issued-at (4 bytes, big-endian Unix seconds) + model version + NUL + track + NUL +
the predicted class indices (little-endian uint16 each), and ``message`` binds the platform model
name, the registered model name, version, track, request id, issued-at and the class indices (see
:meth:`FeedbackSigner.message`). Workers sign (they build the body).

The receipt is **self-contained**: any process holding the deployment's key verifies it and learns
which version and track answered and what they predicted, without having seen the prediction. So
with several replicas per track, feedback counts on whichever replica (or track) the router sends
it to: correct/incorrect are counted under the version and track the receipt names, and the canary
analysis sums those counters over every process (``deployment.metric_source``).

Each row counts once (a replay is 409): the :class:`FeedbackLedger` records labelled rows by
request id. With ``FEEDBACK_LEDGER`` set (the local deployer sets it to
``deployments/<model>/feedback-ledger.sqlite`` for every process of the model), the ledger is one
SQLite file in WAL mode shared by all replicas of both tracks on the host: a claim is one
``BEGIN IMMEDIATE`` transaction, so two replicas can never both accept the same row, and the ledger
survives restarts. Without it (a lone ``python -m serving``), an in-memory ledger of this process
only. Both are bounded: receipts older than ``FEEDBACK_RECEIPT_MAX_AGE_SECONDS`` (default 7 days)
are refused as expired, and the ledger forgets rows older than that; the in-memory one also keeps
at most ``max_requests`` request ids and refuses receipts issued before the newest one it evicted.

Why a shared ledger rather than routing feedback to "the replica that answered" (consistent
hashing on the request id at the router): a replica that restarts, or is taken out by the router's
health checks, would lose its record of what was labelled (allowing replays) or the feedback meant
for it; and clients that do not repeat the request id in a header could not be routed at all.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.config import FEEDBACK_KEY_MIN_BYTES

ROWS_PER_REQUEST_BUDGET = 10  # in-memory ledger: max rows = this x max_requests

TOKEN_VERSION = "v2"
MAC_BYTES = 16  # HMAC-SHA256 truncated to 128 bits (RFC 2104 allows >= half the hash length)
TOKEN_PATTERN = r"^v2\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{22}$"
LEDGER_ENV = "FEEDBACK_LEDGER"
MAX_AGE_ENV = "FEEDBACK_RECEIPT_MAX_AGE_SECONDS"
DEFAULT_MAX_AGE_SECONDS = 7 * 86400
_SEPARATOR = b"\x00"  # appears in none of the fields: names, versions, tracks and request ids are printable
_TOKEN_PREFIX = TOKEN_VERSION.encode() + b"."
_PRINTABLE = re.compile(rb"^[\x21-\x7e]{1,64}$")


def max_token_length(max_rows: int) -> int:
    """The longest receipt of a prediction of ``max_rows`` rows (versions and tracks up to 64 bytes)."""
    payload = 4 + 64 + 1 + 64 + 1 + 2 * max_rows
    return len(_TOKEN_PREFIX) + (payload * 4 + 2) // 3 + 1 + 22


@dataclass(frozen=True)
class Receipt:
    """What a verified receipt says about its prediction."""

    model_version: str
    track: str
    issued_at: int  # Unix seconds
    class_index: np.ndarray  # predicted class index per row

    @property
    def rows(self) -> int:
        return len(self.class_index)


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FeedbackSigner:
    """Signs and verifies feedback receipts with one deployment-wide key.

    Picklable (it travels to the inference workers inside the LitAPI); its
    ``repr`` never shows the key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < FEEDBACK_KEY_MIN_BYTES:
            raise ValueError(f"a feedback signing key needs at least {FEEDBACK_KEY_MIN_BYTES} bytes")
        self._key = key
        self._heads: dict[bytes, bytes] = {}  # prefix -> "version NUL track NUL" of the payload

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
    def message(prefix: bytes, request_id: str, issued: bytes, class_index: np.ndarray) -> bytes:
        """``v2 NUL model NUL name NUL version NUL track NUL request_id NUL`` + issued-at + class indices."""
        classes = np.asarray(class_index, dtype="<u2").tobytes()
        return b"".join((prefix, request_id.encode(), _SEPARATOR, issued, classes))

    def _head(self, prefix: bytes) -> bytes:
        head = self._heads.get(prefix)
        if head is None:
            version, track = prefix.split(_SEPARATOR)[3:5]
            head = self._heads[prefix] = version + _SEPARATOR + track + _SEPARATOR
        return head

    def sign(self, prefix: bytes, request_id: str, class_index: np.ndarray, at: float | None = None) -> bytes:
        """The receipt for one prediction, ASCII (one HMAC over a few dozen bytes for a single row)."""
        issued = int(time.time() if at is None else at).to_bytes(4, "big")
        classes = np.asarray(class_index, dtype="<u2").tobytes()
        mac = hmac.digest(self._key, b"".join((prefix, request_id.encode(), _SEPARATOR, issued, classes)), "sha256")
        payload = issued + self._head(prefix) + classes
        return b"".join((_TOKEN_PREFIX, _b64(payload), b".", _b64(mac[:MAC_BYTES])))

    def open(self, token: str, model: str, model_name: str, request_id: str) -> Receipt | None:
        """The receipt ``token`` states for ``request_id`` if its MAC is genuine (constant-time), else None."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_VERSION:
            return None
        try:
            payload = _unb64(parts[1])
        except (binascii.Error, ValueError):
            return None
        fields = payload[4:].split(_SEPARATOR, 2)
        if len(payload) < 4 or len(fields) != 3:
            return None
        version, track, classes = fields
        if not _PRINTABLE.match(version) or not _PRINTABLE.match(track) or not classes or len(classes) % 2:
            return None
        prefix = self.prefix(model, model_name, version.decode(), track.decode())
        issued = payload[:4]
        mac = hmac.digest(self._key, b"".join((prefix, request_id.encode(), _SEPARATOR, issued, classes)), "sha256")
        if not hmac.compare_digest(parts[2].encode(), _b64(mac[:MAC_BYTES])):
            return None
        return Receipt(
            model_version=version.decode(),
            track=track.decode(),
            issued_at=int.from_bytes(issued, "big"),
            class_index=np.frombuffer(classes, dtype="<u2").astype(np.intp),
        )

    def verify(self, token: str, prefix: bytes, request_id: str, class_index: np.ndarray) -> bool:
        """True when ``token`` is the receipt of exactly this prediction (version, track and classes of ``prefix``)."""
        _, model, name, version, track, _ = prefix.split(_SEPARATOR)
        receipt = self.open(token, model.decode(), name.decode(), request_id)
        return (
            receipt is not None
            and (receipt.model_version, receipt.track) == (version.decode(), track.decode())
            and np.array_equal(receipt.class_index, np.asarray(class_index))
        )


class ReceiptExpired(Exception):
    """The receipt is older than the ledger remembers: it can no longer be counted exactly once."""


class LedgerUnavailable(Exception):
    """The shared ledger could not be reached in time (locked or unreadable): nothing was counted, retry later."""


class FeedbackLedger:
    """Which rows of which request ids were labelled: ``claim`` marks rows, or names those already labelled."""

    def __init__(self, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS) -> None:
        self.max_age_seconds = max_age_seconds

    def check_age(self, issued_at: float, now: float | None = None) -> None:
        if (time.time() if now is None else now) - issued_at > self.max_age_seconds:
            raise ReceiptExpired(f"receipts are counted for {self.max_age_seconds:.0f}s after the prediction")

    def claim(self, request_id: str, rows: list[int], issued_at: float) -> list[int]:
        """Mark ``rows`` of ``request_id`` labelled; return the rows already labelled (then nothing is marked)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the ledger holds open."""


class MemoryLedger(FeedbackLedger):
    """This process only, at most ``max_requests`` request ids and ``max_rows`` rows (oldest forgotten first)."""

    def __init__(
        self, max_requests: int, max_rows: int | None = None, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS
    ) -> None:
        super().__init__(max_age_seconds)
        self.max_requests = max_requests
        self.max_rows = max_rows if max_rows is not None else max_requests * ROWS_PER_REQUEST_BUDGET
        self._entries: OrderedDict[str, tuple[float, set[int]]] = OrderedDict()
        self._rows = 0
        self.horizon = -1.0  # receipts issued at or before this were (maybe) forgotten: refused as expired

    def __len__(self) -> int:
        return len(self._entries)

    def check_age(self, issued_at: float, now: float | None = None) -> None:
        super().check_age(issued_at, now)
        if issued_at <= self.horizon:
            raise ReceiptExpired("this server no longer remembers predictions that old (its ledger is full)")

    def claim(self, request_id: str, rows: list[int], issued_at: float) -> list[int]:
        self.check_age(issued_at)
        entry = self._entries.get(request_id)
        if entry is not None:
            already = sorted(entry[1].intersection(rows))
            if already:
                return already
            entry[1].update(rows)
        else:
            self._entries[request_id] = (issued_at, set(rows))
        self._rows += len(rows)
        while self._entries and (len(self._entries) > self.max_requests or self._rows > self.max_rows):
            _, (issued, labelled) = self._entries.popitem(last=False)
            self._rows -= len(labelled)
            self.horizon = max(self.horizon, issued)
        return []


class SqliteLedger(FeedbackLedger):
    """One SQLite file (WAL) shared by every process of a deployment on this host; survives restarts.

    The connection opens lazily in the process that uses it (never across a fork) and is used by
    one thread at a time (a lock: the API process calls it from its event loop).
    """

    PRUNE_EVERY_SECONDS = 60.0

    def __init__(self, path: Path, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS) -> None:
        super().__init__(max_age_seconds)
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._pruned_at = 0.0

    OPEN_TIMEOUT_SECONDS = 10.0

    def _db(self) -> sqlite3.Connection:
        if self._connection is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=self.OPEN_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            # Replicas starting together race to switch the file to WAL and create the table; switching the
            # journal mode does not wait on the busy timeout, so retry until the deadline.
            deadline = time.monotonic() + self.OPEN_TIMEOUT_SECONDS
            while True:
                try:
                    self._prepare(connection)
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        connection.close()
                        raise LedgerUnavailable(f"feedback ledger {self.path}: {exc}") from None
                    time.sleep(0.02)
            with self._lock:
                self._connection, self._pid = connection, os.getpid()
        return self._connection

    @staticmethod
    def _prepare(connection: sqlite3.Connection) -> None:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS labelled (request_id TEXT NOT NULL, row INTEGER NOT NULL, "
            "issued_at REAL NOT NULL, PRIMARY KEY (request_id, row)) WITHOUT ROWID"
        )
        connection.execute("CREATE INDEX IF NOT EXISTS labelled_issued ON labelled (issued_at)")

    def claim(self, request_id: str, rows: list[int], issued_at: float) -> list[int]:
        self.check_age(issued_at)
        db = self._db()
        with self._lock:
            try:
                db.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout for another process's claim
            except sqlite3.OperationalError as exc:
                raise LedgerUnavailable(f"feedback ledger {self.path}: {exc}") from None
            try:
                labelled = {r for (r,) in db.execute("SELECT row FROM labelled WHERE request_id = ?", (request_id,))}
                already = sorted(labelled.intersection(rows))
                if not already:
                    db.executemany(
                        "INSERT INTO labelled (request_id, row, issued_at) VALUES (?, ?, ?)",
                        [(request_id, int(row), issued_at) for row in rows],
                    )
                now = time.time()
                if now - self._pruned_at > self.PRUNE_EVERY_SECONDS:
                    db.execute("DELETE FROM labelled WHERE issued_at < ?", (now - self.max_age_seconds,))
                    self._pruned_at = now
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return already

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None


def ledger_from_env(environ: Mapping[str, str], max_requests: int) -> FeedbackLedger:
    """``FEEDBACK_LEDGER`` (a file path): the shared SQLite ledger; unset: this process's memory."""
    raw_age = environ.get(MAX_AGE_ENV, "").strip()
    try:
        max_age = float(raw_age) if raw_age else float(DEFAULT_MAX_AGE_SECONDS)
    except ValueError:
        max_age = -1.0
    if not max_age > 0:
        raise ValueError(f"{MAX_AGE_ENV} must be a positive number of seconds, got {raw_age!r}")
    path = environ.get(LEDGER_ENV, "").strip()
    if path:
        return SqliteLedger(Path(path), max_age)
    return MemoryLedger(max_requests, max_age_seconds=max_age)


class LiveAccuracy:
    """Correct / labelled predictions per model version and track, counted by this process since start-up."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], list[int]] = {}

    def record(self, model_version: str, correct: int, total: int, track: str = "") -> float:
        """Add outcomes; return the (version, track)'s accuracy so far in this process."""
        counts = self._counts.setdefault((model_version, track), [0, 0])
        counts[0] += correct
        counts[1] += total
        return counts[0] / counts[1]

    def get(self, model_version: str, track: str = "") -> float | None:
        counts = self._counts.get((model_version, track))
        return counts[0] / counts[1] if counts and counts[1] else None

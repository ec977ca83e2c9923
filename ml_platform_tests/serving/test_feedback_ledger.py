"""Receipts and the replay ledger without a server: self-contained tokens, one claim per row across processes."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from serving.feedback import (
    FeedbackSigner,
    LedgerUnavailable,
    MemoryLedger,
    ReceiptExpired,
    SqliteLedger,
    ledger_from_env,
    max_token_length,
)

KEY = b"k" * 32


def test_a_receipt_carries_version_track_and_classes_and_any_holder_of_the_key_opens_it() -> None:
    signer, other_replica = FeedbackSigner(KEY), FeedbackSigner(KEY)
    prefix = signer.prefix("iris", "iris-random-forest", "7", "canary")
    token = signer.sign(prefix, "req-1", np.array([0, 2, 1]), at=1_700_000_000).decode()

    receipt = other_replica.open(token, "iris", "iris-random-forest", "req-1")

    assert receipt is not None
    assert (receipt.model_version, receipt.track, receipt.issued_at) == ("7", "canary", 1_700_000_000)
    assert receipt.class_index.tolist() == [0, 2, 1]
    assert signer.verify(token, prefix, "req-1", np.array([0, 2, 1]))
    assert not signer.verify(token, prefix, "req-1", np.array([0, 2, 2]))
    # bound to the request id, the platform model, the registered model and the key
    assert other_replica.open(token, "iris", "iris-random-forest", "req-2") is None
    assert other_replica.open(token, "wine", "iris-random-forest", "req-1") is None
    assert other_replica.open(token, "iris", "other", "req-1") is None
    assert FeedbackSigner(b"x" * 32).open(token, "iris", "iris-random-forest", "req-1") is None
    for garbage in ("", "v2", "v2..", "v1.AAAA.AAAA", token + "x", token.replace(".", "!", 1)):
        assert signer.open(garbage, "iris", "iris-random-forest", "req-1") is None


def test_the_longest_receipt_fits_the_schema_bound() -> None:
    signer = FeedbackSigner(KEY)
    prefix = signer.prefix("iris", "iris-random-forest", "9" * 10, "stable")
    token = signer.sign(prefix, "r", np.zeros(10_000, dtype=np.intp))
    assert len(token) <= max_token_length(10_000)


def _claim(path: str, row: int, start: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    ledger = SqliteLedger(Path(path))
    while time.time() < start:
        time.sleep(0.001)
    out.put(ledger.claim("req", [row], time.time()))


def test_four_processes_claiming_one_row_accept_it_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    start = time.time() + 1.0
    workers = [multiprocessing.Process(target=_claim, args=(path, 3, start, queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)

    assert sorted(map(tuple, results)) == [(), (3,), (3,), (3,)]
    again = SqliteLedger(Path(path))  # a restarted replica remembers
    assert again.claim("req", [2, 3], time.time()) == [3]
    assert again.claim("req", [2], time.time()) == []


def test_old_receipts_expire_and_a_full_memory_ledger_refuses_what_it_forgot() -> None:
    ledger = MemoryLedger(max_requests=2, max_age_seconds=60)
    now = time.time()
    with pytest.raises(ReceiptExpired):
        ledger.claim("old", [0], now - 120)
    assert ledger.claim("a", [0], now - 3) == [] and ledger.claim("b", [0], now - 2) == []
    assert ledger.claim("c", [0], now - 1) == []  # evicts "a"
    with pytest.raises(ReceiptExpired):  # "a" could be replayed now: refused instead
        ledger.claim("a", [0], now - 3)
    assert ledger.claim("b", [0], now - 2) == [0]
    assert len(ledger) == 2


def test_the_ledger_comes_from_the_environment(tmp_path: Path) -> None:
    assert isinstance(ledger_from_env({}, 10), MemoryLedger)
    shared = ledger_from_env(
        {"FEEDBACK_LEDGER": str(tmp_path / "l.sqlite"), "FEEDBACK_RECEIPT_MAX_AGE_SECONDS": "5"}, 10
    )
    assert isinstance(shared, SqliteLedger) and shared.max_age_seconds == 5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValueError, match="FEEDBACK_RECEIPT_MAX_AGE_SECONDS"):
            ledger_from_env({"FEEDBACK_RECEIPT_MAX_AGE_SECONDS": bad}, 10)


def test_a_ledger_held_by_another_process_fails_clearly_and_counts_nothing(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.sqlite"
    SqliteLedger(path).claim("warm", [0], time.time())  # the file exists, in WAL mode
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # e.g. a stuck replica mid-transaction
    ledger = SqliteLedger(path)
    ledger.OPEN_TIMEOUT_SECONDS = 0.3
    try:
        with pytest.raises(LedgerUnavailable, match="locked"):
            ledger.claim("req", [1], time.time())
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ledger.claim("req", [1], time.time()) == []  # nothing was counted while it was held

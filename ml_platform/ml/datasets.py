"""Rows, their hashes, the evaluation-set seed and the bounded training window (plain Python).

Row identity
    A row's identity is a 64-bit hash of its canonical values (numeric features as float64,
    categorical features and the label as text, in spec order), computed with
    ``pandas.util.hash_pandas_object(..., index=False)`` and its fixed default key. The same row
    landed twice, in any file, has the same hash.

Evaluation-set seed (documented rule)
    When a model's evaluation set is first built, it is seeded from every batch accepted so far:
    ``k = ceil(holdout_percent % of those rows)`` (at least 1, at most ``max_seed_rows``) rows, the
    ones with the smallest row hash (a deterministic, uniform sample). The seed is stored once as a
    file of the evaluation set and never recomputed; later rows join only by being landed into the
    evaluation folder (through the same batch gate as training data).

Exclusion
    No row whose hash is in the evaluation set ever trains: an exact re-landing of evaluation rows
    is dropped from the training dataset too.

Training window
    Accepted batches are ordered newest first by acceptance time (the mtime the batch gate gave the
    stored file). ``max_age_days`` drops older batches; ``max_rows`` bounds the rows, either
    ``newest_first`` (whole batches, newest first; the last one cut in file order) or
    ``hash_sample`` (the rows with the smallest row hash across the windowed batches). The training
    data version hashes the evaluation-set version, the window and, per batch used, its sha256 and
    the number of rows taken, so it covers exactly the rows used.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_platform.spec import DatasetSpec, TrainingWindow

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

SECONDS_PER_DAY = 86_400.0


def content_version(file_hashes: list[str]) -> str:
    """Hash of a set of files' content hashes (order-independent)."""
    digest = hashlib.sha256()
    for file_hash in sorted(file_hashes):
        digest.update(file_hash.encode())
    return digest.hexdigest()


def read_rows(data: bytes, spec: DatasetSpec, nrows: int | None = None) -> pd.DataFrame:
    """An accepted CSV's rows in spec column order (numeric features float64, the rest as parsed)."""
    import pandas as pd

    dtypes = {name: "float64" for name in spec.numeric_features}
    frame = pd.read_csv(
        io.BytesIO(data),
        skipinitialspace=True,
        encoding="utf-8-sig",
        nrows=nrows,
        dtype=dtypes,
    )
    frame = frame.rename(columns=lambda c: str(c).strip())
    return frame[spec.columns]


def row_hashes(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """The 64-bit identity of every row (see the module docstring)."""
    import pandas as pd

    canonical = pd.DataFrame(
        {
            **{name: frame[name].astype("float64") for name in spec.numeric_features},
            **{name: frame[name].astype(str) for name in spec.categorical_features},
            spec.target.name: frame[spec.target.name].astype(str),
        },
        index=frame.index,
    )[spec.columns]
    return pd.util.hash_pandas_object(canonical, index=False).to_numpy()


def seed_size(rows: int, spec: DatasetSpec) -> int:
    """How many rows the evaluation-set seed holds for ``rows`` accepted rows."""
    if rows <= 0:
        return 0
    wanted = math.ceil(rows * spec.evaluation.holdout_percent / 100.0)
    return max(1, min(wanted, spec.evaluation.max_seed_rows, rows))


def select_seed(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """The seed rows of the evaluation set: the ``seed_size`` rows with the smallest row hash."""
    import numpy as np

    hashes = row_hashes(frame, spec)
    k = seed_size(len(frame), spec)
    order = np.argsort(hashes, kind="stable")[:k]
    return frame.iloc[np.sort(order)].reset_index(drop=True)


@dataclass(frozen=True)
class Batch:
    """One accepted batch: its stored path, partition key, content hash and acceptance time."""

    path: Path
    key: str
    sha256: str
    accepted_at: float


@dataclass
class WindowedDataset:
    """The training rows of one run and exactly where they came from."""

    frame: pd.DataFrame
    used: list[dict[str, Any]]  # [{"key", "sha256", "rows"}] in the order read (newest first)
    skipped_old: list[str]
    excluded_evaluation_rows: int
    available_rows: int | None
    window: dict[str, Any]
    data_version: str = ""
    notes: list[str] = field(default_factory=list)


def key_of_stored(path: Path, sha256: str) -> str:
    """The partition key (``<name>@<sha256>``) of a stored ``<stem>@<sha256><suffix>`` file."""
    name = path.name
    for digest in (sha256, sha256[:12]):
        marker = f"@{digest}"
        if marker in name:
            return f"{name.replace(marker, '', 1)}@{sha256}"
    return f"{name}@{sha256}"


def window_description(window: TrainingWindow) -> dict[str, Any]:
    return asdict(window)


def windowed_batches(
    batches: list[Batch], window: TrainingWindow, now: float | None = None
) -> tuple[list[Batch], list[Batch]]:
    """``(in the window newest first, too old)`` by acceptance time."""
    now = time.time() if now is None else now
    ordered = sorted(batches, key=lambda b: (-b.accepted_at, b.key))
    if window.max_age_days is None:
        return ordered, []
    cutoff = now - window.max_age_days * SECONDS_PER_DAY
    return [b for b in ordered if b.accepted_at >= cutoff], [b for b in ordered if b.accepted_at < cutoff]


def training_data_version(evaluation_version: str, window: TrainingWindow, used: list[dict[str, Any]]) -> str:
    """The data version of exactly these rows: evaluation set, window and rows taken per batch."""
    digest = hashlib.sha256()
    digest.update(f"evaluation:{evaluation_version}\n".encode())
    digest.update(f"window:{sorted(window_description(window).items())}\n".encode())
    for item in sorted(used, key=lambda u: u["sha256"]):
        digest.update(f"{item['sha256']}:{item['rows']}\n".encode())
    return digest.hexdigest()


def build_training_rows(
    batches: list[Batch],
    read: Any,
    spec: DatasetSpec,
    evaluation_hashes: np.ndarray,
    evaluation_version: str,
    now: float | None = None,
) -> WindowedDataset:
    """Read the windowed batches (``read(batch, nrows) -> bytes-parsed frame``), drop evaluation rows,
    bound the rows; returns the frame and its exact provenance."""
    import numpy as np
    import pandas as pd

    window = spec.training.window
    inside, too_old = windowed_batches(batches, window, now)
    frames: list[pd.DataFrame] = []
    hash_parts: list[np.ndarray] = []
    used: list[dict[str, Any]] = []
    excluded = 0
    available = 0
    budget = window.max_rows if window.sampling == "newest_first" else None
    for batch in inside:
        if budget is not None and budget <= 0:
            break
        # newest_first needs at most the budget plus the rows that may be excluded: parse no more
        nrows = None if budget is None else budget + len(evaluation_hashes)
        frame = read(batch, nrows)
        hashes = row_hashes(frame, spec)
        truncated = nrows is not None and len(frame) == nrows and budget is not None
        if truncated and int((~np.isin(hashes, evaluation_hashes)).sum()) < (budget or 0):
            frame = read(batch, None)  # many repeats of evaluation rows: read the whole batch
            hashes = row_hashes(frame, spec)
        keep = ~np.isin(hashes, evaluation_hashes)
        excluded += int((~keep).sum())
        frame, hashes = frame[keep], hashes[keep]
        available += len(frame)
        if budget is not None:
            frame, hashes = frame.iloc[:budget], hashes[:budget]
            budget -= len(frame)
        if len(frame):
            frames.append(frame)
            hash_parts.append(hashes)
            used.append({"key": batch.key, "sha256": batch.sha256, "rows": len(frame)})
    combined = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in spec.columns})[spec.columns]
    )
    notes = []
    if window.sampling == "hash_sample" and window.max_rows is not None and len(combined) > window.max_rows:
        all_hashes = np.concatenate(hash_parts)
        order = np.sort(np.argsort(all_hashes, kind="stable")[: window.max_rows])
        sources = np.concatenate([np.full(len(h), i) for i, h in enumerate(hash_parts)])[order]
        combined = combined.iloc[order].reset_index(drop=True)
        counts = np.bincount(sources, minlength=len(used))
        used = [dict(u, rows=int(c)) for u, c in zip(used, counts, strict=True) if c]
        notes.append(f"hash sample of {window.max_rows} rows out of {available}")
    result = WindowedDataset(
        frame=combined,
        used=used,
        skipped_old=[b.key for b in too_old],
        excluded_evaluation_rows=excluded,
        available_rows=available if budget is None else None,
        window=window_description(window),
        notes=notes,
    )
    result.data_version = training_data_version(evaluation_version, window, used)
    return result

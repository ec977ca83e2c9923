"""Read a landed data file without trusting it.

Never raises for bad content: a file that cannot be parsed as the CSV the spec
describes comes back with ``frame=None`` and a readable ``error`` so the gate
can reject it with a report instead of crashing the run.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd

SNIFF_BYTES = 64 * 1024
_CANDIDATE_DELIMITERS = ",;\t|"


@dataclass
class BatchRead:
    """The outcome of reading one landed file."""

    path: Path
    sha256: str
    size_bytes: int
    frame: pd.DataFrame | None = None
    error: str | None = None
    hints: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else len(self.frame)


def file_sha256(path: Path) -> str:
    """Content hash of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sniff_delimiter(sample: str) -> str | None:
    try:
        return csv.Sniffer().sniff(sample, delimiters=_CANDIDATE_DELIMITERS).delimiter
    except csv.Error:
        return None


def read_batch(path: Path, spec: DatasetSpec) -> BatchRead:
    """Parse ``path`` as a comma-separated file with a header row."""
    import pandas as pd

    size = path.stat().st_size
    result = BatchRead(path=path, sha256=file_sha256(path), size_bytes=size)
    if size == 0:
        result.error = "the file is empty (0 bytes)"
        return result
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if b"\x00" in head:
        result.error = "the file is binary, not a text CSV file"
        return result
    try:
        sample = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the sample boundary; decode leniently to sniff.
        if len(head) < SNIFF_BYTES:
            result.error = "the file is not UTF-8 text, so not a CSV file this platform accepts"
            return result
        sample = head.decode("utf-8", errors="ignore")
    if not sample.strip():
        result.error = "the file holds only whitespace"
        return result
    delimiter = _sniff_delimiter(sample)
    if delimiter and delimiter != ",":
        result.hints.append(f"the file looks delimited by {delimiter!r}; this platform expects comma-separated values")
    first_line = sample.splitlines()[0]
    if first_line.lstrip().startswith(("{", "[")):
        result.hints.append("the file looks like JSON, not CSV")
    try:
        frame = pd.read_csv(path, sep=",", skipinitialspace=True, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        result.error = f"not a well-formed CSV file: {str(exc).strip()[:300]}"
        return result
    if frame.columns.empty:
        result.error = "the file has no header row"
        return result
    frame.columns = [str(c).strip() for c in frame.columns]
    result.frame = frame
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing and len(frame.columns) == 1 and delimiter and delimiter != ",":
        result.hints.append("all values landed in a single column: wrong delimiter")
    return result

"""Read a landed data file without trusting it.

Never raises for bad content: a file that cannot be parsed as the CSV the spec
describes comes back with ``frame=None`` and a readable ``error`` so the gate
can reject it with a report instead of crashing the run. The header is
checked before pandas sees it, so a duplicate column is reported as such
instead of as the ``name.1`` column pandas would invent.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ml_platform.spec import DatasetSpec
from ml_platform.validation.problems import parse_error_sentence
from ml_platform.validation.safe_io import hash_file, open_regular

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
    header_problems: list[str] = field(default_factory=list)
    name: str | None = None  # the name the file landed under, when the path is a private copy

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else len(self.frame)

    @property
    def file_name(self) -> str:
        return self.name or self.path.name


def file_sha256(path: Path) -> str:
    """Content hash of a regular file, streamed (a symbolic link is refused, never followed)."""
    return hash_file(path)


def _sniff_delimiter(sample: str) -> str | None:
    try:
        return csv.Sniffer().sniff(sample, delimiters=_CANDIDATE_DELIMITERS).delimiter
    except csv.Error:
        return None


def header_problems(header: list[str], spec: DatasetSpec) -> tuple[list[str], bool]:
    """Plain sentences about the header row, and whether the columns are too ambiguous to read."""
    problems = []
    duplicates = [name for name, count in Counter(header).items() if count > 1]
    problems += [f"duplicate column {name}" for name in duplicates]
    blank = sum(1 for name in header if not name)
    if blank:
        problems.append(f"{blank} column(s) without a name in the header row")
    problems += [f"missing column {name}" for name in spec.columns if name not in header]
    if not spec.validation.allow_extra_columns:
        problems += [f"unexpected column {name}" for name in header if name and name not in spec.columns]
    return problems, bool(duplicates)


def read_batch(path: Path, spec: DatasetSpec, sha256: str | None = None, name: str | None = None) -> BatchRead:
    """Parse ``path`` as a comma-separated file with a header row.

    The file is read once, through a descriptor that refuses links; ``sha256`` (the hash the
    caller computed while copying it) is trusted only when given, otherwise computed here.
    """
    import pandas as pd

    fd = open_regular(path)
    with open(fd, "rb") as handle:
        data = handle.read()
    result = BatchRead(path=path, sha256=sha256 or hashlib.sha256(data).hexdigest(), size_bytes=len(data), name=name)
    if not data:
        result.error = "the file is empty (0 bytes)"
        return result
    head = data[:SNIFF_BYTES]
    if b"\x00" in head:
        result.error = "the file is binary, not a text CSV file"
        return result
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        result.error = f"the file is not UTF-8 text (invalid byte at offset {exc.start}), so not a CSV file"
        return result
    sample = text[:SNIFF_BYTES]
    if not sample.strip():
        result.error = "the file holds only whitespace"
        return result
    delimiter = _sniff_delimiter(sample)
    if delimiter and delimiter != ",":
        result.hints.append(f"the file looks delimited by {delimiter!r}; this platform expects comma-separated values")
    first_line = next((line for line in sample.splitlines() if line.strip()), "")
    if first_line.lstrip().startswith(("{", "[")):
        result.hints.append("the file looks like JSON, not CSV")
    try:
        header = [c.strip() for c in next(csv.reader([first_line], skipinitialspace=True))]
    except (csv.Error, StopIteration):
        header = []
    problems, ambiguous = header_problems(header, spec)
    result.header_problems = problems
    if ambiguous:
        return result  # duplicate names: no frame could say which column is which
    try:
        frame = pd.read_csv(io.StringIO(text), sep=",", skipinitialspace=True, dtype=None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        result.error = parse_error_sentence(str(exc))
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

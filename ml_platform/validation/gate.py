"""The batch gate for one landed entry: copy, validate, then accept or quarantine.

Plain Python; ``raw_batch`` calls :func:`process` for each file of its run and
records the returned :class:`FileOutcome`. One file's failure (even an
unexpected exception) never stops the others: it becomes that file's
quarantine report.
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from ml_platform.spec import DatasetSpec
from ml_platform.validation.landing import LandedFile, LandingFolders, Staged
from ml_platform.validation.names import stored_name
from ml_platform.validation.safe_io import KIND_SENTENCES, NotRegularFileError

ACCEPTED = "accepted"
QUARANTINED = "quarantined"
CHANGED = "changed"  # content differs from the partition key's hash: left in incoming/
GONE = "gone"  # taken away before this run got to it (e.g. by a concurrent run)


@dataclass
class FileOutcome:
    """What the gate did with one landed entry."""

    partition_key: str
    file_name: str
    status: str
    problems: list[str] = field(default_factory=list)
    summary: str = ""
    stored_path: str | None = None
    report_json: str | None = None
    report_markdown: str | None = None
    sha256: str = ""
    size_bytes: int = 0
    rows: int = 0
    failing_rows: int = 0
    kind: str = "file"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rejected(self) -> bool:
        return self.status in (QUARANTINED, CHANGED)


def _report_paths(outcome: FileOutcome) -> None:
    if outcome.stored_path and outcome.status == QUARANTINED:
        outcome.report_json = outcome.stored_path + ".report.json"
        outcome.report_markdown = outcome.stored_path + ".report.md"


def _refuse_entry(folders: LandingFolders, landed: LandedFile, key: str, spec: DatasetSpec) -> FileOutcome:
    from ml_platform.validation.expectations import rejection_report

    name = landed.path.name
    problems = [f"{safe_display(name)}: {KIND_SENTENCES.get(landed.kind, KIND_SENTENCES['other'])}"]
    problems += landed.name_problems
    report = rejection_report(safe_display(name), problems, spec, sha256=landed.sha256)
    target = folders.store_entry(landed, key, (report.to_json(), report.to_markdown()))
    outcome = FileOutcome(
        key,
        safe_display(name),
        QUARANTINED,
        problems,
        report.summary(),
        str(target),
        sha256=landed.sha256,
        kind=landed.kind,
    )
    _report_paths(outcome)
    return outcome


def safe_display(name: str) -> str:
    """A file name as it can be shown in a log or report (control characters escaped)."""
    return name.encode("unicode_escape", "backslashreplace").decode("ascii") if not name.isprintable() else name


def process(folders: LandingFolders, landed: LandedFile, spec: DatasetSpec, key: str | None = None) -> FileOutcome:
    """Validate one entry and store it; ``key`` (partition mode) pins the content hash expected."""
    key = key or landed.partition_key
    if landed.kind != "file":
        return _refuse_entry(folders, landed, key, spec)
    try:
        staged = folders.stage(landed)
    except NotRegularFileError:  # became a link or pipe after it was described
        return _refuse_entry(folders, folders.describe(landed.path), key, spec)
    except FileNotFoundError:
        return FileOutcome(key, safe_display(landed.path.name), GONE, summary=f"{key} left {landed.path.parent}")
    if staged.copy.sha256 != landed.sha256:
        folders.discard(staged)
        problem = (
            f"{safe_display(landed.path.name)} changed after it was registered as {key} "
            f"(its sha256 is now {staged.copy.sha256}); it stays where it is and is processed as a new version"
        )
        return FileOutcome(
            key, safe_display(landed.path.name), CHANGED, [problem], problem, str(landed.path), sha256=landed.sha256
        )
    return _validate_and_store(folders, staged, key, spec)


def _validate_and_store(folders: LandingFolders, staged: Staged, key: str, spec: DatasetSpec) -> FileOutcome:
    from ml_platform.validation.expectations import rejection_report, validate_batch
    from ml_platform.validation.reader import read_batch

    landed = staged.landed
    display = safe_display(landed.path.name)
    name_problems = landed.name_problems
    if name_problems:
        name_problems = [*name_problems, f"stored as {stored_name(key)}; rename the file and land it again"]
    try:
        report = validate_batch(read_batch(staged.copy.path, spec, staged.copy.sha256, display), spec)
        if name_problems:
            report.problems = name_problems + report.problems
            report.success = False
    except Exception as exc:  # one file's surprise must not stop the sweep: it is that file's report
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        problems = [*name_problems, f"the batch gate could not evaluate the file ({detail[:200]})"]
        report = rejection_report(display, problems, spec, staged.copy.sha256, staged.copy.size_bytes)
    retracted = folders.retracted_hashes().get(staged.copy.sha256) if report.success else None
    if retracted is not None:  # content an operator retracted never comes back by being landed again
        report.problems = [
            f"this exact content (sha256 {staged.copy.sha256}) was retracted as {retracted} "
            f"({folders.retracted_dir}); it is not accepted again. If the retraction was a mistake, move the file "
            "and its .retraction.json from retracted/ back to accepted/",
            *report.problems,
        ]
        report.success = False
    accepted = report.success
    reports = None if accepted else (report.to_json(), report.to_markdown())
    target = folders.store(staged, key, accepted=accepted, reports=reports)
    outcome = FileOutcome(
        partition_key=key,
        file_name=display,
        status=ACCEPTED if accepted else QUARANTINED,
        problems=report.problems,
        summary=report.summary(),
        stored_path=str(target),
        sha256=staged.copy.sha256,
        size_bytes=staged.copy.size_bytes,
        rows=report.rows,
        failing_rows=report.failing_rows,
    )
    _report_paths(outcome)
    return outcome

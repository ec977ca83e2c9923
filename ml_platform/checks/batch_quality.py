"""The batch gate's checks: one decides whether training may go on, one whether the run is clean.

``raw_batch`` validates every landed file and accepts or quarantines it. Then:

- ``batch_passes_expectation_suite`` (blocking, on ``raw_batch``) fails with ERROR severity only
  when files were checked and none was accepted (nothing new to train on), which stops training.
  When some files were accepted and others quarantined it fails with WARN severity: the accepted
  files still train.
- ``every_landed_file_accepted`` (blocking, ERROR, on the leaf ``landing_report``) fails whenever a
  file was rejected. Nothing in ``training_job`` depends on it, so it fails the run (and
  ``dagster job execute`` exits non-zero) without holding back the good files.
"""

from typing import Any

import dagster as dg

from ml_platform.assets.ingestion import landing_report, raw_batch
from ml_platform.resources.landing_zone import LandingZone


def _rejection_lines(files: list[dict[str, Any]], rejected: list[str]) -> list[str]:
    keys = set(rejected)
    lines = []
    for f in files:
        if f["partition_key"] in keys:
            where = f" (report: {f['report_markdown']})" if f.get("report_markdown") else ""
            lines.append(f"{f['partition_key']}: {'; '.join(f['problems'][:3])}{where}")
    return lines


@dg.asset_check(
    asset=raw_batch,
    blocking=True,
    description=(
        "Every landed file of the run passed the Great Expectations suite generated from the dataset "
        "spec (columns, types, ranges, nulls, class set, number of classes, row count). ERROR (stops "
        "training) when no file was accepted; WARN when some files were quarantined but others were "
        "accepted, so the accepted ones still train."
    ),
)
def batch_passes_expectation_suite(
    context: dg.AssetCheckExecutionContext, raw_batch: dict[str, Any], landing_zone: LandingZone
) -> dg.AssetCheckResult:
    """Judge the gate's decisions recorded by ``raw_batch`` for this run."""
    files = [f for f in raw_batch["files"] if f["status"] != "gone"]
    accepted = raw_batch.get("accepted", [])
    rejected = raw_batch.get("rejected", [])
    lines = _rejection_lines(files, rejected)
    if rejected and not accepted:
        severity = dg.AssetCheckSeverity.ERROR
        summary = f"all {len(rejected)} file(s) rejected, nothing new to train on: " + " | ".join(lines)
    elif rejected:
        severity = dg.AssetCheckSeverity.WARN
        summary = (
            f"{len(rejected)} of {len(files)} file(s) rejected; the {len(accepted)} accepted file(s) train: "
            + " | ".join(lines)
        )
    else:
        severity = dg.AssetCheckSeverity.ERROR
        summary = f"{len(accepted)} file(s) accepted" if accepted else "no new files to validate"
    for line in lines:
        context.log.error(f"rejected {line}")
    reports = [
        f"- `{f['partition_key'][:120]}` **{f['status']}**: "
        + "; ".join(f["problems"][:5])
        + (f" — report `{f['report_markdown']}`" if f.get("report_markdown") else "")
        for f in files
    ]
    return dg.AssetCheckResult(
        passed=not rejected,
        severity=severity,
        description=summary[:2000],
        metadata={
            "files_checked": len(files),
            "files_accepted": len(accepted),
            "files_rejected": len(rejected),
            "failing_row_count": sum(int(f.get("failing_rows") or 0) for f in files),
            "rejected_files": dg.MetadataValue.json([f for f in files if f["partition_key"] in set(rejected)]),
            "quarantine_dir": dg.MetadataValue.path(str(landing_zone.quarantine_dir)),
            "report": dg.MetadataValue.md("\n".join(reports) or "_nothing to validate_"),
        },
    )


@dg.asset_check(
    asset=landing_report,
    blocking=True,
    description=(
        "Every file the run picked up was accepted. Fails with ERROR severity when any was quarantined, "
        "so the run (and `dagster job execute`) fails and names the files and their reports, while the "
        "accepted files have still been trained on (nothing downstream depends on this check)."
    ),
)
def every_landed_file_accepted(landing_report: dict[str, Any]) -> dg.AssetCheckResult:
    """Fail the run when any landed file of it was rejected."""
    rejected = landing_report.get("rejected", [])
    lines = [
        f"{r['partition_key']}: {'; '.join(r['problems'][:3])}"
        + (f" (report: {r['report_markdown']})" if r.get("report_markdown") else "")
        for r in rejected
    ]
    return dg.AssetCheckResult(
        passed=not rejected,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"{len(rejected)} file(s) rejected: " + " | ".join(lines))[:2000]
        if rejected
        else f"all {len(landing_report.get('accepted', []))} landed file(s) accepted",
        metadata={
            "files_rejected": len(rejected),
            "files_accepted": len(landing_report.get("accepted", [])),
            "rejected": dg.MetadataValue.md("\n".join(f"- {line}" for line in lines) or "_none_"),
        },
    )

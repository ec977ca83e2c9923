"""The batch gate: every landed file must pass the GX suite generated from the spec."""

from pathlib import Path
from typing import Any

import dagster as dg

from ml_platform.assets.ingestion import raw_batch
from ml_platform.resources.landing_zone import LandingZone
from ml_platform.spec import load_spec


@dg.asset_check(
    asset=raw_batch,
    blocking=True,
    description=(
        "Validates each landed file with the Great Expectations suite generated from the dataset spec "
        "(columns, types, ranges, nulls, class set, row count). Passing files move to accepted/; failing "
        "files move to quarantine/ with a JSON and markdown report, and nothing downstream is trained."
    ),
)
def batch_passes_expectation_suite(
    context: dg.AssetCheckExecutionContext, raw_batch: dict[str, Any], landing_zone: LandingZone
) -> dg.AssetCheckResult:
    """Run the GX suite on every file of this run, then accept or quarantine each one."""
    from ml_platform.validation.expectations import validate_batch
    from ml_platform.validation.reader import read_batch

    spec = load_spec()
    accepted: list[str] = []
    rejected: list[str] = []
    reports: list[str] = []
    failing_rows = 0
    for described in raw_batch["files"]:
        key = described["partition_key"]
        path = Path(described["path"])
        if not path.exists():
            path = landing_zone.locate(key)
        report = validate_batch(read_batch(path, spec), spec)
        reports.append(report.to_markdown())
        if report.success:
            target = landing_zone.accept(path, key)
            accepted.append(key)
            context.log.info(f"accepted {key} -> {target}")
        else:
            target = landing_zone.quarantine(path, key, report.to_json(), report.to_markdown())
            rejected.append(key)
            failing_rows += report.failing_rows
            context.log.error(f"{report.summary()} Quarantined at {target}")

    summary = (
        f"{len(rejected)} of {len(raw_batch['files'])} file(s) rejected: " + ", ".join(rejected)
        if rejected
        else f"{len(accepted)} file(s) accepted"
        if accepted
        else "no new files to validate"
    )
    return dg.AssetCheckResult(
        passed=not rejected,
        severity=dg.AssetCheckSeverity.ERROR,
        description=summary,
        metadata={
            "files_checked": len(raw_batch["files"]),
            "files_accepted": len(accepted),
            "files_rejected": len(rejected),
            "failing_row_count": failing_rows,
            "quarantine_dir": dg.MetadataValue.path(str(landing_zone.quarantine_dir)),
            "report": dg.MetadataValue.md("\n\n".join(reports) or "_nothing to validate_"),
        },
    )

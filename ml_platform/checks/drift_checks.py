"""Checks on the daily drift report: drift share, prediction PSI, live accuracy.

Thresholds come from the spec's ``drift`` section (PSI bands 0.1 / 0.25 by
default). Severity is configurable: ``severity: WARN`` (default) alerts,
``severity: ERROR`` gates (the checks are blocking, so an ERROR failure fails
the run and stops anything downstream); ``DRIFT_CHECK_SEVERITY`` overrides
the spec. Outcomes:

* beyond the threshold: failed, with the configured severity;
* prediction PSI in the moderate band (psi_warn <= PSI < psi_alert): failed, WARN;
* a window too small to judge (fewer than ``min_window_rows`` rows), or a
  version without reference snapshot: failed with WARN and the description
  "Not judged: ..." and ``status=not_judged`` metadata. It never passes as
  "no drift" and never gates as drift;
* live accuracy without any feedback passes with ``status=no_data``.

A window served by several versions is judged per version; the check takes
the worst outcome among the versions that could be judged.
"""

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg

from ml_platform.assets.monitoring import drift_partitions, drift_report
from ml_platform.monitoring import decisions
from ml_platform.monitoring.decisions import DriftThresholds, Verdict

# Partitioned asset checks (one result per day, so backfills show each day's outcome) are a
# preview feature in Dagster 1.13; the version is pinned and the behaviour is covered by
# ml_platform_tests/monitoring. Silence only that notice, which would print on every load.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)


def _check_result(
    report: dict[str, Any],
    judge: Callable[[Mapping[str, Any], DriftThresholds], Verdict],
    observed: Mapping[str, Any],
    *,
    when_empty: Verdict | None = None,
) -> dg.AssetCheckResult:
    thresholds = DriftThresholds.from_dict(report["thresholds"])
    verdicts = [judge(result, thresholds) for result in report["versions"].values()]
    if not verdicts and when_empty is not None:
        verdicts = [when_empty]
    outcome = decisions.overall(verdicts)
    passed = outcome in ("pass", "no_data")
    severity = (
        dg.AssetCheckSeverity.ERROR
        if outcome == "fail" and thresholds.severity == "ERROR"
        else dg.AssetCheckSeverity.WARN
    )
    ordered = sorted(verdicts, key=lambda v: -decisions.rank(v.outcome))
    if outcome == "not_judged":
        detail = "; ".join(v.description for v in ordered) or report["reason"]
        description = f"Not judged: {detail}"
    else:
        description = "; ".join(v.description for v in ordered if v.outcome != "not_judged")
        skipped = [v.description for v in ordered if v.outcome == "not_judged"]
        if skipped:
            description += " (not judged: " + "; ".join(skipped) + ")"
    table = ["| version | outcome | detail |", "|---|---|---|"]
    for version, verdict in zip(report["versions"], verdicts, strict=False):
        table.append(f"| v{version} | {verdict.outcome} | {verdict.description} |")
    return dg.AssetCheckResult(
        passed=passed,
        severity=severity,
        description=description,
        metadata={
            "status": "not_judged" if outcome == "not_judged" else outcome,
            "window_date": report["date"],
            "window_rows": dg.MetadataValue.int(int(report["window_rows"])),
            "configured_severity": thresholds.severity,
            "verdicts": dg.MetadataValue.md("\n".join(table)),
            **observed,
        },
    )


def _headline(report: dict[str, Any]) -> dict[str, Any] | None:
    version = report.get("headline_version")
    return report["versions"].get(version) if version else None


def _float(value: Any) -> dg.MetadataValue | None:
    return None if value is None else dg.MetadataValue.float(float(value))


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@dg.asset_check(
    asset=drift_report,
    partitions_def=drift_partitions,
    blocking=True,
    description=(
        "Share of drifted features (Evidently DataDriftPreset methods) stays below the spec's "
        "drift_share_threshold for every model version in the window. Severity from the spec "
        "(WARN alerts, ERROR gates; DRIFT_CHECK_SEVERITY overrides); a window too small to judge "
        "is reported as not judged (WARN)."
    ),
)
def drift_share_within_threshold(drift_report: dict[str, Any]) -> dg.AssetCheckResult:
    """Judge the feature drift share of each version against the spec threshold."""
    head = _headline(drift_report) or {}
    thresholds = drift_report["thresholds"]
    return _check_result(
        drift_report,
        decisions.drift_share_verdict,
        _drop_none(
            {
                "drift_share": _float(head.get("drift_share")),
                "drift_share_threshold": dg.MetadataValue.float(float(thresholds["drift_share_threshold"])),
                "drifted_features": ", ".join(head.get("drifted_features") or []) or "none",
            }
        ),
    )


@dg.asset_check(
    asset=drift_report,
    partitions_def=drift_partitions,
    blocking=True,
    description=(
        "PSI of the predicted classes against the reference snapshot, in the conventional bands: "
        "below psi_warn (0.1) passes, up to psi_alert (0.25) warns, beyond fails with the spec's "
        "severity. A window too small to judge is reported as not judged (WARN)."
    ),
)
def prediction_psi_within_bands(drift_report: dict[str, Any]) -> dg.AssetCheckResult:
    """Judge the prediction PSI of each version against the spec's PSI bands."""
    head = _headline(drift_report) or {}
    thresholds = drift_report["thresholds"]
    return _check_result(
        drift_report,
        decisions.prediction_psi_verdict,
        _drop_none(
            {
                "prediction_psi": _float(head.get("prediction_psi")),
                "psi_warn": dg.MetadataValue.float(float(thresholds["psi_warn"])),
                "psi_alert": dg.MetadataValue.float(float(thresholds["psi_alert"])),
            }
        ),
    )


@dg.asset_check(
    asset=drift_report,
    partitions_def=drift_partitions,
    blocking=True,
    description=(
        "Live accuracy from the day's feedback (correct / labelled rows) stays at or above the spec's "
        "min_live_accuracy, shown beside the version's training accuracy. Judged from min_window_rows "
        "feedback rows; passes with status no_data when there is no feedback."
    ),
)
def live_accuracy_above_minimum(drift_report: dict[str, Any]) -> dg.AssetCheckResult:
    """Judge each version's live accuracy against the spec minimum."""
    head = _headline(drift_report) or {}
    thresholds = drift_report["thresholds"]
    return _check_result(
        drift_report,
        decisions.live_accuracy_verdict,
        _drop_none(
            {
                "live_accuracy": _float(head.get("live_accuracy")),
                "training_accuracy": _float(head.get("training_accuracy")),
                "min_live_accuracy": dg.MetadataValue.float(float(thresholds["min_live_accuracy"])),
                "feedback_rows": dg.MetadataValue.int(int(head.get("feedback_rows") or 0)),
            }
        ),
        when_empty=Verdict("no_data", f"no feedback logged on {drift_report['date']}"),
    )

"""Production monitoring: a daily window of the prediction log, and its drift report.

``production_window`` (one partition per UTC day) reads only that day's folder
of the serving log, joins feedback and stores the window as Parquet.
``drift_report`` compares each model version's rows with the reference
snapshot of that version (the Evidently HTML goes under the platform home or
``DRIFT_REPORTS_URI``), records numeric scores as metadata so Dagster plots
them across partitions, and pushes them to a Prometheus Pushgateway.
"""

import os
from typing import Any

import dagster as dg

from ml_platform.assets.reference import reference_snapshot
from ml_platform.monitoring.resources import DriftMetricsPusher, PredictionLog
from ml_platform.resources.mlflow_resources import MlflowRegistry
from ml_platform.spec import load_spec

MONITORING_GROUP = "monitoring"
PARTITIONS_START_ENV = "DRIFT_PARTITIONS_START_DATE"
DEFAULT_PARTITIONS_START = "2025-01-01"

drift_partitions = dg.DailyPartitionsDefinition(
    start_date=os.environ.get(PARTITIONS_START_ENV, "").strip() or DEFAULT_PARTITIONS_START,
    timezone="UTC",
    # Today's partition exists while the day is still running: a report on "today so far"
    # is what a user wants after sending traffic. The schedule reports on complete days.
    end_offset=1,
)


def _write_parquet(frame: Any, uri: str) -> None:
    from upath import UPath

    target = UPath(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as handle:
        frame.to_parquet(handle, index=False)


def _version_value(version: str | None) -> Any:
    if version is None:
        return dg.MetadataValue.text("none")
    return dg.MetadataValue.int(int(version)) if version.isdigit() else dg.MetadataValue.text(version)


@dg.asset(
    partitions_def=drift_partitions,
    group_name=MONITORING_GROUP,
    kinds={"parquet", "pandas"},
    io_manager_key="json_io_manager",
    description=(
        "One UTC day of the serving prediction log (PREDICTION_LOG_DIR, default <home>/logs/predictions; "
        "only that day's date=YYYY-MM-DD/ folder is read), joined with the day's feedback on "
        "(request_id, row), stored as Parquet. Metadata: row counts, feedback counts, model versions seen."
    ),
)
def production_window(context: dg.AssetExecutionContext, prediction_log: PredictionLog) -> dg.Output[dict[str, Any]]:
    """Read one day of predictions and feedback and store the joined window."""
    from ml_platform.monitoring.logs import feedback_by_version, join_window, rows_by_version
    from ml_platform.monitoring.paths import window_uri

    spec = load_spec()
    day = context.partition_key
    day_log = prediction_log.read_day(day, spec)
    window = join_window(day_log, spec)
    uri = window_uri(spec.name, day)
    _write_parquet(window.frame, uri)

    versions = rows_by_version(window.frame)
    feedback = feedback_by_version(window.feedback)
    tracks = {str(k): int(v) for k, v in window.frame["track"].astype(str).value_counts().items()}
    table = ["| model version | prediction rows | feedback rows | correct |", "|---|---:|---:|---:|"]
    for version in sorted(set(versions) | set(feedback), key=lambda v: (-versions.get(v, 0), v)):
        correct, total = feedback.get(version, (0, 0))
        table.append(f"| v{version} | {versions.get(version, 0)} | {total} | {correct} |")
    stats = day_log.prediction_stats
    context.log.info(
        f"{day}: {len(window.frame)} prediction rows of {spec.model.name} from {len(stats.files)} file(s), "
        f"{len(window.feedback)} feedback rows ({window.feedback_joined} joined)"
    )
    value = {
        "dataset": spec.name,
        "model_name": spec.model.name,
        "date": day,
        "uri": uri,
        "rows": len(window.frame),
        "feedback_rows": len(window.feedback),
        "feedback_joined": window.feedback_joined,
        "feedback_unmatched": window.feedback_unmatched,
        "model_versions": versions,
        "feedback_by_version": {v: list(ct) for v, ct in feedback.items()},
        "tracks": tracks,
        "log_root": day_log.root,
    }
    timestamps = window.frame["timestamp"].dropna()
    return dg.Output(
        value,
        metadata={
            "dagster/row_count": len(window.frame),
            "feedback_rows": len(window.feedback),
            "feedback_joined": window.feedback_joined,
            "feedback_unmatched": window.feedback_unmatched,
            "model_versions": ", ".join(f"v{v}" for v in versions) or "none",
            "model_version_count": len(versions),
            "rows_by_version": dg.MetadataValue.md("\n".join(table)),
            "tracks": dg.MetadataValue.json(tracks),
            "prediction_files": len(stats.files),
            "feedback_files": len(day_log.feedback_stats.files),
            "skipped_lines": stats.skipped_lines + day_log.feedback_stats.skipped_lines,
            "partial_tail_bytes": stats.partial_tail_bytes + day_log.feedback_stats.partial_tail_bytes,
            "other_model_rows": window.other_model_rows,
            "log_folder": dg.MetadataValue.path(f"{day_log.root.rstrip('/')}/date={day}"),
            "window": dg.MetadataValue.path(uri),
            "first_timestamp": str(timestamps.min()) if len(timestamps) else "none",
            "last_timestamp": str(timestamps.max()) if len(timestamps) else "none",
        },
    )


def _newest_reported_day(context: dg.AssetExecutionContext) -> str | None:
    materialized = context.instance.get_materialized_partitions(context.assets_def.key)
    return max(materialized) if materialized else None


@dg.asset(
    partitions_def=drift_partitions,
    ins={"production_window": dg.AssetIn(key=production_window.key)},
    deps=[reference_snapshot],
    group_name=MONITORING_GROUP,
    kinds={"evidently", "pandas"},
    io_manager_key="json_io_manager",
    description=(
        "Drift of one day's production window against the reference snapshot of the model version that "
        "served it (each version against its own snapshot; headline = the version with most rows): "
        "per-feature method, score and decision, share of drifted features, prediction PSI, live vs "
        "training accuracy. Evidently 0.7 HTML (bounded sample) under <home>/reports/drift or "
        "DRIFT_REPORTS_URI; scores pushed to PROMETHEUS_PUSHGATEWAY_URL when set."
    ),
)
def drift_report(
    context: dg.AssetExecutionContext,
    production_window: dict[str, Any],
    mlflow_registry: MlflowRegistry,
    drift_metrics: DriftMetricsPusher,
) -> dg.Output[dict[str, Any]]:
    """Compute the day's drift report, save the HTML, push the gauges, record the scores."""
    import pandas as pd
    from upath import UPath

    from ml_platform.monitoring import decisions
    from ml_platform.monitoring.decisions import JUDGED, DriftThresholds
    from ml_platform.monitoring.report import build_report, features_markdown, versions_markdown, write_summary

    spec = load_spec()
    day = context.partition_key
    thresholds = DriftThresholds.from_spec(spec)
    with UPath(production_window["uri"]).open("rb") as handle:
        window = pd.read_parquet(handle)
    feedback = {v: (int(ct[0]), int(ct[1])) for v, ct in production_window["feedback_by_version"].items()}
    report = build_report(
        spec, day, window, feedback, thresholds, client_factory=mlflow_registry.client, log=context.log.info
    )

    newest = _newest_reported_day(context)
    if newest is not None and day < newest:
        report["prometheus"] = (
            f"skipped: {day} is older than the newest drift report ({newest}); the alerting state keeps the newer day"
        )
    else:
        report["prometheus"] = drift_metrics.push(report)
    if report["prometheus"].startswith("failed"):
        context.log.warning(f"Prometheus push {report['prometheus']}")
    signals = [
        verdict.description
        for result in report["versions"].values()
        for verdict in (
            decisions.drift_share_verdict(result, thresholds),
            decisions.prediction_psi_verdict(result, thresholds),
            decisions.live_accuracy_verdict(result, thresholds),
        )
        if verdict.outcome == "fail"
    ]
    report["signals"] = signals
    write_summary(report)

    headline = report["versions"].get(report["headline_version"]) if report["headline_version"] else None
    metadata: dict[str, Any] = {
        "status": report["status"],
        "reason": report["reason"] or "judged",
        "window_date": day,
        "window_rows": dg.MetadataValue.int(report["window_rows"]),
        "dagster/row_count": dg.MetadataValue.int(report["window_rows"]),
        "headline_model_version": _version_value(report["headline_version"]),
        "model_versions": ", ".join(f"v{v}" for v in report["versions"]) or "none",
        "drift_detected": dg.MetadataValue.bool(report["drift_detected"]),
        "live_accuracy_low": dg.MetadataValue.bool(report["live_accuracy_low"]),
        "signals": "; ".join(signals) if signals else "none",
        "drift_share_threshold": dg.MetadataValue.float(thresholds.drift_share_threshold),
        "psi_warn": dg.MetadataValue.float(thresholds.psi_warn),
        "psi_alert": dg.MetadataValue.float(thresholds.psi_alert),
        "min_window_rows": dg.MetadataValue.int(thresholds.min_window_rows),
        "min_live_accuracy": dg.MetadataValue.float(thresholds.min_live_accuracy),
        "check_severity": thresholds.severity,
        "versions": dg.MetadataValue.md(versions_markdown(report)),
        "prometheus": report["prometheus"],
        "summary": dg.MetadataValue.path(report["summary_uri"]),
    }
    if headline is not None and headline["status"] == JUDGED:
        metadata |= {
            "drift_share": dg.MetadataValue.float(float(headline["drift_share"])),
            "drifted_features": dg.MetadataValue.int(int(headline["drifted_count"])),
            "dataset_drift": dg.MetadataValue.bool(bool(headline["dataset_drift"])),
            "prediction_psi": dg.MetadataValue.float(float(headline["prediction_psi"])),
            "prediction_psi_band": headline["prediction_psi_band"],
            "feature_drift": dg.MetadataValue.md(features_markdown(headline)),
            "reference_rows": dg.MetadataValue.int(int(headline["reference_rows"])),
            "reference_snapshot": dg.MetadataValue.path(headline["reference_uri"]),
        }
        for feature in headline["features"]:
            metadata[f"drift_score/{feature['feature']}"] = dg.MetadataValue.float(float(feature["score"]))
        evidently = headline.get("evidently")
        if evidently:
            metadata["evidently_report"] = dg.MetadataValue.url(evidently["html_link"])
            metadata["evidently_sample"] = evidently["note"]
    if headline is not None:
        if headline.get("live_accuracy") is not None:
            metadata["live_accuracy"] = dg.MetadataValue.float(float(headline["live_accuracy"]))
        if headline.get("training_accuracy") is not None:
            metadata["training_accuracy"] = dg.MetadataValue.float(float(headline["training_accuracy"]))
            metadata["training_accuracy_source"] = headline["training_accuracy_source"]
        metadata["feedback_rows"] = dg.MetadataValue.int(int(headline["feedback_rows"]))
    context.log.info(
        f"{day}: status {report['status']}, drift_detected={report['drift_detected']}, "
        f"live_accuracy_low={report['live_accuracy_low']}; Prometheus {report['prometheus']}"
    )
    return dg.Output(report, metadata=metadata)

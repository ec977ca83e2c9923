"""Monitoring of one model: a daily window of its prediction log, its drift report and checks, the
daily drift schedule and the drift-retrain sensor.

``<model>/production_window`` (one partition per UTC day) reads only that day's folder of the
model's serving log, joins feedback and stores the window as Parquet; it depends on
``<model>/canary_deployment`` (what serves the traffic). ``<model>/drift_report`` compares each
model version's rows with the reference snapshot of that version, records numeric scores as
metadata so Dagster plots them across partitions, and pushes them to a Prometheus Pushgateway
(grouped by model).

The checks on the report (drift share, prediction PSI, live accuracy) take their thresholds from
the spec's ``drift`` section. Severity ``WARN`` (default) alerts, ``ERROR`` gates
(``DRIFT_CHECK_SEVERITY`` overrides). A window too small to judge, or a version without reference
snapshot, fails with WARN as "Not judged: ..."; live accuracy without feedback passes with
``status=no_data``. A window served by several versions takes the worst judged outcome.

``<model>_drift_retrain_sensor`` is the feedback loop: it reads this model's ``drift_report``
materializations since the last one it saw and requests ``<model>_training_job`` when a report
says ``drift_detected`` or ``live_accuracy_low``, at most once per
``DRIFT_RETRAIN_COOLDOWN_SECONDS`` (default one day); reports on windows older than
``DRIFT_RETRAIN_MAX_WINDOW_AGE_DAYS`` (default 3) are ignored, so backfills do not retrain.
"""

import json
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg

from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import DriftMetricsResource, MlflowRegistryResource, PredictionLogResource
from ml_platform.monitoring import decisions
from ml_platform.monitoring.decisions import DriftThresholds, Verdict

# Partitioned asset checks (one result per day, so backfills show each day's outcome) are a
# preview feature in Dagster 1.13; the version is pinned and the behaviour is covered by
# ml_platform_tests/monitoring. Silence only that notice, which would print on every load.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

SCHEDULE_CRON = "30 0 * * *"


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


def _newest_reported_day(context: dg.AssetExecutionContext) -> str | None:
    materialized = context.instance.get_materialized_partitions(context.assets_def.key)
    return max(materialized) if materialized else None


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


COOLDOWN_ENV = "DRIFT_RETRAIN_COOLDOWN_SECONDS"
DEFAULT_COOLDOWN_SECONDS = 24 * 3600
MAX_AGE_ENV = "DRIFT_RETRAIN_MAX_WINDOW_AGE_DAYS"
DEFAULT_MAX_WINDOW_AGE_DAYS = 3
MINIMUM_INTERVAL_SECONDS = 300
FETCH_LIMIT = 500
TAG_PREFIX = "ml_platform/"
MAX_TAG_CHARS = 250


def cooldown_seconds() -> float:
    raw = os.environ.get(COOLDOWN_ENV, "").strip()
    return float(raw) if raw else float(DEFAULT_COOLDOWN_SECONDS)


def max_window_age_days() -> int:
    raw = os.environ.get(MAX_AGE_ENV, "").strip()
    return int(raw) if raw else DEFAULT_MAX_WINDOW_AGE_DAYS


@dataclass
class RetrainCursor:
    """What the sensor remembers between ticks."""

    last_storage_id: int = 0
    last_fired_at: float | None = None
    last_fired_window: str | None = None
    last_run_key: str | None = None
    suppressed_since_fired: int = 0

    @classmethod
    def parse(cls, raw: str | None) -> "RetrainCursor":
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (json.JSONDecodeError, TypeError):
            return cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Trigger:
    """A drift report that asks for retraining."""

    storage_id: int
    run_id: str
    window: str
    reasons: tuple[str, ...]
    signals: str
    model_versions: str
    metadata: dict[str, Any]


def _value(metadata: dict[str, Any], key: str) -> Any:
    item = metadata.get(key)
    return getattr(item, "value", item)


def _trigger(record: Any) -> Trigger | None:
    materialization = record.asset_materialization
    if materialization is None:
        return None
    metadata = dict(materialization.metadata)
    reasons = []
    if _value(metadata, "drift_detected") is True:
        reasons.append("drift")
    if _value(metadata, "live_accuracy_low") is True:
        reasons.append("live_accuracy")
    if not reasons:
        return None
    observed = {
        key: _value(metadata, key)
        for key in ("drift_share", "prediction_psi", "live_accuracy", "training_accuracy", "headline_model_version")
        if _value(metadata, key) is not None
    }
    return Trigger(
        storage_id=record.storage_id,
        run_id=record.run_id,
        window=str(record.partition_key or _value(metadata, "window_date") or ""),
        reasons=tuple(reasons),
        signals=str(_value(metadata, "signals") or ""),
        model_versions=str(_value(metadata, "model_versions") or ""),
        metadata=observed,
    )


def _too_old(window: str, now: float, max_age_days: int) -> bool:
    try:
        day = date.fromisoformat(window)
    except ValueError:
        return False
    today = datetime.fromtimestamp(now, UTC).date()
    return (today - day).days > max_age_days


def _tags(trigger: Trigger, seen: int) -> dict[str, str]:
    tags = {
        "trigger": "drift_retrain_sensor",
        "retrain_reason": ",".join(trigger.reasons),
        "retrain_detail": trigger.signals or ",".join(trigger.reasons),
        "drift_window": trigger.window,
        "drift_model_versions": trigger.model_versions,
        "drift_report_run_id": trigger.run_id,
        "drift_triggering_reports": str(seen),
    }
    for key, value in trigger.metadata.items():
        tags[key] = f"{value:.4f}" if isinstance(value, float) else str(value)
    return {f"{TAG_PREFIX}{k}": v[:MAX_TAG_CHARS] for k, v in tags.items()}


def _mlflow_metadata(
    context: dg.AssetExecutionContext, mlflow_registry: MlflowRegistryResource, model: str, report: dict[str, Any]
) -> dict[str, Any]:
    """Log the report's HTML to MLflow and link it (the MLflow UI can open it; a ``file://`` link cannot)."""
    from ml_platform.monitoring.mlflow_report import log_drift_report

    try:
        logged = log_drift_report(mlflow_registry.client(), model, report, mlflow_registry.resolved_uri())
    except Exception as exc:  # the report stands on its own: an MLflow outage only loses the copy
        context.log.warning(f"drift report not logged to MLflow: {type(exc).__name__}: {exc}")
        return {"mlflow": f"not logged: {type(exc).__name__}: {str(exc)[:200]}"}
    metadata: dict[str, Any] = {"mlflow_run_id": logged.run_id}
    headline = str(report.get("headline_version") or "")
    link = logged.artifact_link(headline) if headline else None
    run_link = logged.run_link()
    if link:
        metadata["evidently_report"] = dg.MetadataValue.url(link)
    if run_link:
        metadata["mlflow_run"] = dg.MetadataValue.url(run_link)
    else:
        metadata["mlflow"] = (
            "logged; set MLFLOW_UI_URL (make dev does) or use an http tracking URI for links into the MLflow UI"
        )
    return metadata


def build_monitoring_defs(model: ModelContext) -> dg.Definitions:
    """``<model>/production_window``, ``<model>/drift_report`` with its checks, the daily schedule of
    ``<model>_drift_job`` and ``<model>_drift_retrain_sensor``."""
    spec = model.spec
    drift_job_name = model.job_name("drift_job")
    training_job_name = model.job_name("training_job")
    schedule_name = model.schedule_name("drift_daily_schedule")

    @dg.asset(
        **model.asset_kwargs("production_window"),
        partitions_def=model.days,
        # every deployed version may have served a day: no one-to-one partition mapping, so depend on them all
        deps=[dg.AssetDep(model.key("canary_deployment"), partition_mapping=dg.AllPartitionMapping())],
        kinds={"parquet", "pandas"},
        io_manager_key="json_io_manager",
        description=(
            f"One UTC day of the {model.name} serving prediction log (PREDICTION_LOG_ROOT, default "
            f"<home>/logs/predictions, folder {model.name}/; only that day's date=YYYY-MM-DD/ folder is read), joined "
            "with the day's feedback on (request_id, row), stored as Parquet. Metadata: row counts, feedback "
            "counts, model versions seen."
        ),
    )
    def production_window(
        context: dg.AssetExecutionContext, prediction_log: PredictionLogResource
    ) -> dg.Output[dict[str, Any]]:
        """Read one day of predictions and feedback and store the joined window."""
        from ml_platform.monitoring.logs import feedback_by_version, join_window, rows_by_version
        from ml_platform.monitoring.paths import window_uri

        day = context.partition_key
        day_log = prediction_log.read_day(model.name, day, spec)
        window = join_window(day_log, spec)
        uri = window_uri(model.name, day)
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
            "model": model.name,
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
            "smoke_requests_excluded": stats.smoke_lines,
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
                "other_model_lines": stats.other_model_lines + day_log.feedback_stats.other_model_lines,
                "legacy_lines": stats.legacy_lines + day_log.feedback_stats.legacy_lines,
                "unattributed_lines": stats.unattributed_lines + day_log.feedback_stats.unattributed_lines,
                "smoke_requests_excluded": stats.smoke_lines,  # the platform's own smoke tests: not production
                "log_folder": dg.MetadataValue.path(day_log.folder),
                "window": dg.MetadataValue.path(uri),
                "first_timestamp": str(timestamps.min()) if len(timestamps) else "none",
                "last_timestamp": str(timestamps.max()) if len(timestamps) else "none",
            },
        )

    @dg.asset(
        **model.asset_kwargs("drift_report"),
        partitions_def=model.days,
        ins={"production_window": dg.AssetIn(key=model.key("production_window"))},
        deps=[model.key("reference_snapshot")],
        kinds={"evidently", "pandas"},
        io_manager_key="json_io_manager",
        description=(
            "Drift of one day's production window against the reference snapshot of the model version that "
            "served it (each version against its own snapshot; headline = the version with most rows): "
            "per-feature method, score and decision, share of drifted features, prediction PSI, live vs "
            "training accuracy. Evidently 0.7 HTML (bounded sample) under <home>/reports/drift or "
            "DRIFT_REPORTS_URI; scores pushed to PROMETHEUS_PUSHGATEWAY_URL when set (grouped by model)."
        ),
    )
    def drift_report(
        context: dg.AssetExecutionContext,
        production_window: dict[str, Any],
        mlflow_registry: MlflowRegistryResource,
        drift_metrics: DriftMetricsResource,
    ) -> dg.Output[dict[str, Any]]:
        """Compute the day's drift report, save the HTML, push the gauges, record the scores."""
        import pandas as pd
        from upath import UPath

        from ml_platform.monitoring import decisions
        from ml_platform.monitoring.decisions import JUDGED, DriftThresholds
        from ml_platform.monitoring.report import build_report, features_markdown, versions_markdown, write_summary

        day = context.partition_key
        thresholds = DriftThresholds.from_spec(spec)
        with UPath(production_window["uri"]).open("rb") as handle:
            window = pd.read_parquet(handle)
        feedback = {v: (int(ct[0]), int(ct[1])) for v, ct in production_window["feedback_by_version"].items()}
        report = build_report(
            spec,
            day,
            window,
            feedback,
            thresholds,
            model=model.name,
            client_factory=mlflow_registry.client,
            log=context.log.info,
        )

        newest = _newest_reported_day(context)
        if newest is not None and day < newest:
            report["prometheus"] = (
                f"skipped: {day} is older than the newest drift report ({newest}); "
                "the alerting state keeps the newer day"
            )
        else:
            report["prometheus"] = drift_metrics.push(model.name, report)
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
                metadata["evidently_report_file"] = dg.MetadataValue.path(evidently["html_uri"])
                metadata["evidently_sample"] = evidently["note"]
        if headline is not None:
            if headline.get("live_accuracy") is not None:
                metadata["live_accuracy"] = dg.MetadataValue.float(float(headline["live_accuracy"]))
            if headline.get("training_accuracy") is not None:
                metadata["training_accuracy"] = dg.MetadataValue.float(float(headline["training_accuracy"]))
                metadata["training_accuracy_source"] = headline["training_accuracy_source"]
            metadata["feedback_rows"] = dg.MetadataValue.int(int(headline["feedback_rows"]))
        metadata |= _mlflow_metadata(context, mlflow_registry, model.name, report)
        context.log.info(
            f"{day}: status {report['status']}, drift_detected={report['drift_detected']}, "
            f"live_accuracy_low={report['live_accuracy_low']}; Prometheus {report['prometheus']}"
        )
        return dg.Output(report, metadata=metadata)

    @dg.asset_check(
        asset=drift_report,
        partitions_def=model.days,
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
        partitions_def=model.days,
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
        partitions_def=model.days,
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

    @dg.schedule(
        name=schedule_name,
        job_name=drift_job_name,
        cron_schedule=SCHEDULE_CRON,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"Every day at 00:30 UTC, run `{drift_job_name}` on the day that just ended (yesterday's "
            "partition, complete by then)."
        ),
    )
    def drift_daily_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        """Request drift_job for the previous UTC day."""
        day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
        return dg.RunRequest(
            run_key=f"{model.name}-drift-{day}",
            partition_key=day,
            tags={**model.tags, "ml_platform/trigger": schedule_name},
        )

    @dg.sensor(
        name=model.sensor_name("drift_retrain_sensor"),
        job_name=training_job_name,
        minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"The feedback loop of {model.name}: requests `{training_job_name}` when a new "
            f"`{model.name}/drift_report` says the production window drifted (feature drift share or prediction "
            "PSI beyond the spec's thresholds) or live accuracy fell below min_live_accuracy. At most one run per "
            "DRIFT_RETRAIN_COOLDOWN_SECONDS (default 86400); reports on windows older than "
            "DRIFT_RETRAIN_MAX_WINDOW_AGE_DAYS (default 3) are ignored. The run's ml_platform/retrain_* tags "
            "record why it fired."
        ),
    )
    def drift_retrain_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        """Turn new drift reports into at most one retraining run per cooldown."""
        cursor = RetrainCursor.parse(context.cursor)
        now = time.time()
        max_age = max_window_age_days()
        triggers: list[Trigger] = []
        ignored_old = 0
        after = cursor.last_storage_id
        while True:
            result = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=model.key("drift_report"), after_storage_id=after or None),
                limit=FETCH_LIMIT,
                ascending=True,
            )
            for record in result.records:
                after = max(after, record.storage_id)
                trigger = _trigger(record)
                if trigger is None:
                    continue
                if _too_old(trigger.window, now, max_age):
                    ignored_old += 1
                    continue
                triggers.append(trigger)
            if not result.has_more:
                break
        cursor.last_storage_id = after

        if not triggers:
            note = (
                f" ({ignored_old} drifted report(s) on windows older than {max_age} days ignored)"
                if ignored_old
                else ""
            )
            return dg.SensorResult(skip_reason=f"no new drift report asks for retraining{note}", cursor=cursor.dump())

        cooldown = cooldown_seconds()
        if cursor.last_fired_at is not None and now - cursor.last_fired_at < cooldown:
            cursor.suppressed_since_fired += len(triggers)
            remaining = cooldown - (now - cursor.last_fired_at)
            context.log.info(
                f"{len(triggers)} drift report(s) ask for retraining, but the last retrain was requested "
                f"{now - cursor.last_fired_at:.0f}s ago (cooldown {cooldown:.0f}s)"
            )
            return dg.SensorResult(
                skip_reason=(
                    f"cooldown: retraining was requested {now - cursor.last_fired_at:.0f}s ago for window "
                    f"{cursor.last_fired_window}; {len(triggers)} new trigger(s) suppressed, {remaining:.0f}s left"
                ),
                cursor=cursor.dump(),
            )

        latest = max(triggers, key=lambda t: (t.window, t.storage_id))
        run_key = f"{model.name}-drift-retrain-{latest.storage_id}"
        cursor.last_fired_at = now
        cursor.last_fired_window = latest.window
        cursor.last_run_key = run_key
        cursor.suppressed_since_fired = 0
        context.log.info(
            f"requesting {training_job_name}: {latest.signals or ','.join(latest.reasons)} (window {latest.window})"
        )
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=run_key, tags={**model.tags, **_tags(latest, len(triggers))})],
            cursor=cursor.dump(),
        )

    return dg.Definitions(
        assets=[production_window, drift_report],
        asset_checks=[drift_share_within_threshold, prediction_psi_within_bands, live_accuracy_above_minimum],
        schedules=[drift_daily_schedule],
        sensors=[drift_retrain_sensor],
    )

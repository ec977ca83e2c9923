"""``drift_retrain_sensor``: retrain when production drifts or live accuracy drops, with a cooldown.

The feedback loop: every tick reads the ``drift_report`` materializations
recorded since the last one it saw (its cursor holds their storage id). A
report asks for retraining when its ``drift_detected`` (feature drift share
or prediction PSI beyond threshold, on a judged window) or ``live_accuracy_low``
metadata is true; the same judgements the drift checks make. Reports of
windows older than ``DRIFT_RETRAIN_MAX_WINDOW_AGE_DAYS`` (default 3) are
ignored, so backfilling history does not retrain today's model.

At most one ``training_job`` run per cooldown (``DRIFT_RETRAIN_COOLDOWN_SECONDS``,
default one day): triggers seen within the cooldown are consumed without a
run, so one bad day, or a backfill of several, does not start a storm. The
run's tags say why it was requested.
"""

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg

from ml_platform.assets.monitoring import drift_report
from ml_platform.jobs import training_job

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


@dg.sensor(
    job=training_job,
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "The feedback loop: requests `training_job` when a new `drift_report` says the production window "
        "drifted (feature drift share or prediction PSI beyond the spec's thresholds) or live accuracy fell "
        "below min_live_accuracy. At most one run per DRIFT_RETRAIN_COOLDOWN_SECONDS (default 86400); reports "
        "on windows older than DRIFT_RETRAIN_MAX_WINDOW_AGE_DAYS (default 3) are ignored. The run's "
        "ml_platform/retrain_* tags record why it fired."
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
            dg.AssetRecordsFilter(asset_key=drift_report.key, after_storage_id=after or None),
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
        note = f" ({ignored_old} drifted report(s) on windows older than {max_age} days ignored)" if ignored_old else ""
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
    run_key = f"drift-retrain-{latest.storage_id}"
    cursor.last_fired_at = now
    cursor.last_fired_window = latest.window
    cursor.last_run_key = run_key
    cursor.suppressed_since_fired = 0
    context.log.info(f"requesting training_job: {latest.signals or ','.join(latest.reasons)} (window {latest.window})")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=run_key, tags=_tags(latest, len(triggers)))],
        cursor=cursor.dump(),
    )

"""The monitoring part of the code location, for ``ml_platform.definitions.build_defs`` to include.

Importing this module loads only Dagster and light platform modules.
"""

from typing import Any

from ml_platform.assets.monitoring import drift_report, production_window
from ml_platform.checks.drift_checks import (
    drift_share_within_threshold,
    live_accuracy_above_minimum,
    prediction_psi_within_bands,
)
from ml_platform.monitoring.jobs import drift_daily_schedule, drift_job
from ml_platform.monitoring.resources import DriftMetricsPusher, PredictionLog
from ml_platform.sensors.drift_retrain import drift_retrain_sensor

ASSETS = [production_window, drift_report]
ASSET_CHECKS = [drift_share_within_threshold, prediction_psi_within_bands, live_accuracy_above_minimum]
JOBS = [drift_job]
SENSORS = [drift_retrain_sensor]
SCHEDULES = [drift_daily_schedule]
RESOURCES: dict[str, Any] = {
    "prediction_log": PredictionLog(),
    "drift_metrics": DriftMetricsPusher(),
}

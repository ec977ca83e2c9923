"""drift_retrain_sensor against a real instance holding real drift_report materializations.

The reports come from drift_job runs on logs written by real serving processes
(today's partition); the sensor is evaluated the way the daemon does, with the
cursor it returned last time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pytest

from ml_platform.definitions import defs
from ml_platform.defs.monitoring import RetrainCursor
from ml_platform_tests.monitoring.conftest import ModelStore, ServedLogs
from ml_platform_tests.monitoring.helpers import run_drift_job

pytestmark = pytest.mark.slow

COOLDOWN = 3600
drift_retrain_sensor = defs.get_sensor_def("iris_drift_retrain_sensor")


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    result = drift_retrain_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    assert isinstance(result, dg.SensorResult)
    return result


def _skip(result: dg.SensorResult) -> str:
    assert not result.run_requests
    assert result.skip_reason is not None
    return result.skip_reason.skip_message or ""


def test_fires_once_on_drift_then_respects_the_cooldown(
    monitoring_env: Path, served_logs: ServedLogs, model_store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFT_RETRAIN_COOLDOWN_SECONDS", str(COOLDOWN))
    assert drift_retrain_sensor.job_name == "iris_training_job"
    with dg.instance_for_test() as instance:
        # A quiet day asks for nothing.
        monkeypatch.setenv("PREDICTION_LOG_ROOT", str(served_logs.normal))
        assert run_drift_job(instance, served_logs.day).success
        quiet = _tick(instance, None)
        assert "no new drift report asks for retraining" in _skip(quiet)

        # Shifted traffic: one training_job request, with the reason in its tags.
        monkeypatch.setenv("PREDICTION_LOG_ROOT", str(served_logs.shifted))
        drifted_run = run_drift_job(instance, served_logs.day)
        assert drifted_run.success
        fired = _tick(instance, quiet.cursor)
        assert len(fired.run_requests) == 1
        request = fired.run_requests[0]
        tags = request.tags
        assert tags["ml_platform/trigger"] == "drift_retrain_sensor" and tags["ml_platform/model"] == "iris"
        assert tags["ml_platform/retrain_reason"] == "drift,live_accuracy"
        assert "drift share" in tags["ml_platform/retrain_detail"]
        assert "prediction PSI" in tags["ml_platform/retrain_detail"]
        assert "live accuracy" in tags["ml_platform/retrain_detail"]
        assert tags["ml_platform/drift_window"] == served_logs.day
        assert tags["ml_platform/drift_report_run_id"] == drifted_run.run_id
        assert tags["ml_platform/drift_model_versions"] == f"v{model_store.version}"
        assert float(tags["ml_platform/drift_share"]) >= 0.5
        assert float(tags["ml_platform/live_accuracy"]) < 0.7
        assert all(len(v) <= 250 for v in tags.values())
        assert request.run_key and request.run_key.startswith("iris-drift-retrain-")

        # Nothing new: nothing requested.
        assert "no new drift report" in _skip(_tick(instance, fired.cursor))

        # The next bad report within the cooldown is consumed without a run: no storm.
        assert run_drift_job(instance, served_logs.day).success
        cooled = _tick(instance, fired.cursor)
        message = _skip(cooled)
        assert message.startswith("cooldown:") and "1 new trigger(s) suppressed" in message
        state = RetrainCursor.parse(cooled.cursor)
        assert state.suppressed_since_fired == 1
        assert state.last_fired_window == served_logs.day

        # Once the cooldown has passed, the next bad report fires again (a new run key).
        assert run_drift_job(instance, served_logs.day).success
        aged = json.loads(cooled.cursor or "{}")
        aged["last_fired_at"] = time.time() - COOLDOWN - 1
        again = _tick(instance, json.dumps(aged))
        assert len(again.run_requests) == 1
        assert again.run_requests[0].run_key != request.run_key


def test_too_small_window_never_triggers(
    monitoring_env: Path, served_logs: ServedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREDICTION_LOG_ROOT", str(served_logs.small))
    with dg.instance_for_test() as instance:
        assert run_drift_job(instance, served_logs.day).success
        assert "no new drift report" in _skip(_tick(instance, None))

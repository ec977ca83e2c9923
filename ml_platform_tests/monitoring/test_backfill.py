"""Backfilling several past days of drift_job, and the daily schedule.

A serving process logs under the real current date, so past days cannot come
from one: the generator (``ml_platform.monitoring.generate``) writes them in
serving's documented log format, scored by the registered model. A backfill
is one run per day; one of them goes through ``dagster job execute`` as a user
or CI would run it, the others run in process against the same instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from ml_platform.definitions import defs
from ml_platform.monitoring.generate import write_prediction_log
from ml_platform.spec import load_spec
from ml_platform_tests.conftest import REPO_ROOT
from ml_platform_tests.monitoring.conftest import ModelStore
from ml_platform_tests.monitoring.helpers import materialization, run_drift_job, scrape, series

pytestmark = pytest.mark.slow

DAGSTER = str(Path(sys.executable).with_name("dagster"))
PRODUCTION_WINDOW = dg.AssetKey(["iris", "production_window"])
DRIFT_REPORT = dg.AssetKey(["iris", "drift_report"])
drift_daily_schedule = defs.get_schedule_def("iris_drift_daily_schedule")
drift_retrain_sensor = defs.get_sensor_def("iris_drift_retrain_sensor")
CHECK_NAMES = ("drift_share_within_threshold", "prediction_psi_within_bands", "live_accuracy_above_minimum")


def _day(days_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y-%m-%d")


def test_backfill_of_several_days(
    monitoring_env: Path,
    model_store: ModelStore,
    pushgateway_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log_dir = tmp_path / "logs"
    monkeypatch.setenv("PREDICTION_LOG_ROOT", str(log_dir))
    monkeypatch.setenv("PROMETHEUS_PUSHGATEWAY_URL", pushgateway_url)
    spec = load_spec()
    drifted, quiet, newest = _day(6), _day(4), _day(2)
    model_uri = f"models:/iris-random-forest/{model_store.version}"
    shifted = ["petal_length", "petal_width"]
    write_prediction_log(spec, drifted, 150, 2.0, model="iris", features=shifted, model_uri=model_uri, seed=1)
    write_prediction_log(spec, quiet, 150, model="iris", model_uri=model_uri, seed=2)
    write_prediction_log(spec, newest, 150, model="iris", model_uri=model_uri, seed=3)
    assert sorted(p.name for p in log_dir.iterdir()) == ["iris"], "generate writes into the model's folder"

    # The newest day through the command line, into the persistent instance under DAGSTER_HOME ...
    cli = subprocess.run(
        [
            DAGSTER,
            "job",
            "execute",
            "-m",
            "ml_platform",
            "-j",
            "drift_job",
            "--tags",
            json.dumps({"dagster/partition": newest}),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "RUN_SUCCESS" in cli.stdout + cli.stderr

    # ... then the older days, out of order as parallel backfill runs may finish.
    with dg.DagsterInstance.get() as instance:
        results = {day: run_drift_job(instance, day) for day in (drifted, quiet)}
        assert all(r.success for r in results.values())

        for key in (PRODUCTION_WINDOW, DRIFT_REPORT):
            assert instance.get_materialized_partitions(key) == {drifted, quiet, newest}
        # every day has its own check results (partitioned checks)
        for name in CHECK_NAMES:
            history = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(DRIFT_REPORT, name), limit=10
            )
            assert {r.partition for r in history} == {drifted, quiet, newest}, name
        outcomes = {
            r.partition: r.status.value
            for r in instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(DRIFT_REPORT, "drift_share_within_threshold"), limit=10
            )
        }
        assert outcomes == {drifted: "FAILED", quiet: "SUCCEEDED", newest: "SUCCEEDED"}

        old = materialization(results[drifted], "drift_report")
        assert old["drift_detected"] is True and old["window_date"] == drifted
        # An older day never overwrites the alerting state of a newer one.
        assert old["prometheus"] == (
            f"skipped: {drifted} is older than the newest drift report ({newest}); "
            "the alerting state keeps the newer day"
        )
        assert set(series(scrape(pushgateway_url), "ml_platform_drift_detected").values()) == {0.0}

        # Backfilling history does not retrain today's model: that drifted window is 6 days old.
        tick = drift_retrain_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(tick, dg.SensorResult)
        assert not tick.run_requests
        assert "older than 3 days ignored" in (tick.skip_reason.skip_message or "")


def test_daily_schedule_reports_on_the_day_that_ended() -> None:
    moment = datetime(2026, 11, 26, 0, 30, tzinfo=UTC)
    request = drift_daily_schedule(dg.build_schedule_context(scheduled_execution_time=moment))
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "2026-11-25"
    assert request.run_key == "iris-drift-2026-11-25"


def test_partitions_include_today_so_a_running_day_can_be_reported() -> None:
    partitions = defs.get_assets_def(DRIFT_REPORT).partitions_def
    assert partitions is not None
    keys = partitions.get_partition_keys()
    assert keys[-1] == datetime.now(UTC).strftime("%Y-%m-%d")

"""drift_job on logs written by real serving processes: no drift, drift, and a window too small to judge."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import httpx
import pytest

from ml_platform_tests.conftest import REPO_ROOT
from ml_platform_tests.monitoring.conftest import (
    NORMAL_ROWS,
    SHIFTED_FEATURES,
    SHIFTED_ROWS,
    SMALL_ROWS,
    ModelStore,
    ServedLogs,
)
from ml_platform_tests.monitoring.helpers import (
    check_results,
    materialization,
    prometheus,
    run_drift_job,
    scrape,
    series,
)

pytestmark = pytest.mark.slow

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CHECKS = {"drift_share_within_threshold", "prediction_psi_within_bands", "live_accuracy_above_minimum"}
CONTRACT = {
    "ml_platform_drift_share",
    "ml_platform_prediction_psi",
    "ml_platform_feature_drift_score",
    "ml_platform_drift_detected",
    "ml_platform_live_accuracy",
}


def test_traffic_drawn_like_the_training_data_shows_no_drift(
    monitoring_env: Path, served_logs: ServedLogs, model_store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREDICTION_LOG_ROOT", str(served_logs.normal))
    monkeypatch.setenv("MLFLOW_UI_URL", "http://127.0.0.1:5000")  # what `make dev` sets for its MLflow UI
    with dg.instance_for_test() as instance:
        result = run_drift_job(instance, served_logs.day)
    assert result.success

    window = materialization(result, "production_window")
    rows = SMALL_ROWS + NORMAL_ROWS
    assert window["dagster/row_count"] == rows
    assert window["feedback_rows"] == window["feedback_joined"] == rows
    assert window["feedback_unmatched"] == 0
    assert window["model_versions"] == f"v{model_store.version}"
    assert window["skipped_lines"] == 0
    assert window["log_folder"].endswith(f"/iris/date={served_logs.day}")
    assert window["other_model_lines"] == 0 and window["unattributed_lines"] == 0

    report = materialization(result, "drift_report")
    assert report["status"] == "judged"
    assert report["headline_model_version"] == int(model_store.version)
    assert report["drift_detected"] is False and report["live_accuracy_low"] is False
    assert report["dataset_drift"] is False
    assert report["drift_share"] < 0.5
    assert report["prediction_psi"] < 0.1 and report["prediction_psi_band"] == "stable"
    assert report["live_accuracy"] >= 0.9
    assert report["training_accuracy"] == pytest.approx(model_store.test_accuracy)
    assert report["training_accuracy_source"] == "mlflow_run_accuracy"
    assert report["reference_snapshot"] == model_store.snapshot_uri
    for feature in FEATURES:  # numeric, so Dagster plots them across partitions
        assert isinstance(report[f"drift_score/{feature}"], float)
    assert "K-S p_value" in report["feature_drift"]
    assert report["prometheus"] == "skipped: PROMETHEUS_PUSHGATEWAY_URL is not set"

    # The Evidently 0.7 HTML is under the platform home, linked from the materialization.
    html = (
        monitoring_env
        / "reports"
        / "drift"
        / "iris"
        / f"date={served_logs.day}"
        / f"drift_report-v{model_store.version}.html"
    )
    assert Path(report["evidently_report_file"]).resolve() == html.resolve()
    # ... and logged to MLflow, linked into the MLflow UI (a browser cannot open a file:// link from Dagster's UI).
    import mlflow

    client = mlflow.MlflowClient(model_store.tracking_uri)
    run = client.get_run(report["mlflow_run_id"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "ml_platform-iris-monitoring"
    assert run.data.tags["window_date"] == served_logs.day and run.info.status == "FINISHED"
    artifact = f"evidently/drift_report-v{model_store.version}.html"
    assert report["evidently_report"] == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/artifacts/{artifact}"
    )
    assert Path(client.download_artifacts(run.info.run_id, artifact, str(monitoring_env))).read_bytes() == (
        html.read_bytes()
    )
    assert run.data.metrics["drift_share"] == pytest.approx(report["drift_share"])
    text = html.read_text(errors="replace")
    assert "Drifted Columns" in text and all(feature in text for feature in FEATURES)
    summary = json.loads(Path(report["summary"]).read_text())
    version = summary["versions"][model_store.version]
    # Evidently itself (all rows here) reaches the engine's per-feature decisions.
    assert {c: v["drifted"] for c, v in version["evidently"]["columns"].items()} == {
        f["feature"]: f["drifted"] for f in version["features"]
    }

    checks = check_results(result)
    assert set(checks) == CHECKS
    assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}


def test_shifted_traffic_is_detected_pushed_and_fires_the_alert(
    monitoring_env: Path,
    served_logs: ServedLogs,
    model_store: ModelStore,
    pushgateway_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREDICTION_LOG_ROOT", str(served_logs.shifted))
    monkeypatch.setenv("PROMETHEUS_PUSHGATEWAY_URL", pushgateway_url)
    with dg.instance_for_test() as instance:
        result = run_drift_job(instance, served_logs.day)
    assert result.success, "WARN severity (the spec's default) alerts without failing the run"

    report = materialization(result, "drift_report")
    assert report["status"] == "judged"
    assert report["drift_detected"] is True and report["dataset_drift"] is True
    assert report["drift_share"] >= 0.5
    for feature in SHIFTED_FEATURES:
        assert f"{feature}" in report["signals"]
        assert report[f"drift_score/{feature}"] < 0.05  # K-S p-value
    assert report["prediction_psi"] >= 0.25 and report["prediction_psi_band"] == "significant"
    assert report["live_accuracy"] < 0.7 and report["live_accuracy_low"] is True
    assert report["prometheus"].startswith(f"pushed to {pushgateway_url}")
    assert materialization(result, "production_window")["dagster/row_count"] == SHIFTED_ROWS

    checks = check_results(result)
    assert {n: c.passed for n, c in checks.items()} == dict.fromkeys(CHECKS, False)
    assert {c.severity for c in checks.values()} == {dg.AssetCheckSeverity.WARN}
    psi = checks["prediction_psi_within_bands"]
    assert "significant shift" in psi.description
    assert psi.metadata["psi_alert"].value == 0.25 and psi.metadata["psi_warn"].value == 0.1

    # The Pushgateway holds the contract's gauges, labelled for the alert rules.
    samples = scrape(pushgateway_url)
    base = {("job", "ml_platform_drift"), ("model", "iris"), ("dataset", "iris")} | {
        ("model_version", model_store.version)
    }
    for name in CONTRACT:
        found = series(samples, name)
        assert found and all(base <= set(labels) for labels in found), name
    assert set(series(samples, "ml_platform_drift_detected").values()) == {1.0}
    scores = {dict(lbl)["feature"]: v for lbl, v in series(samples, "ml_platform_feature_drift_score").items()}
    assert set(scores) == set(FEATURES)
    assert scores["petal_length"] == pytest.approx(report["drift_score/petal_length"])
    assert list(series(samples, "ml_platform_live_accuracy").values()) == [pytest.approx(report["live_accuracy"])]

    # ... and a real Prometheus with deploy/'s rules fires DataDriftDetected and PredictionPsiHigh on them.
    rules = REPO_ROOT / "deploy" / "monitoring" / "rules" / "drift.rules.yml"
    with prometheus(tmp_path / "prometheus", pushgateway_url, [rules]) as prom:
        firing = _wait_for_alerts(prom, {"DataDriftDetected", "PredictionPsiHigh"})
    assert firing["DataDriftDetected"]["labels"]["model_version"] == model_store.version
    assert firing["DataDriftDetected"]["labels"]["model"] == "iris"
    assert firing["PredictionPsiHigh"]["labels"]["severity"] == "critical"


def _wait_for_alerts(prom: str, names: set[str], timeout: float = 60.0) -> dict[str, dict]:
    import time

    deadline = time.monotonic() + timeout
    firing: dict[str, dict] = {}
    while time.monotonic() < deadline:
        alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        firing = {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}
        if names <= set(firing):
            return firing
        time.sleep(0.5)
    raise AssertionError(f"alerts firing after {timeout}s: {sorted(firing)}; wanted {sorted(names)}")


def test_error_severity_gates_the_run(
    monitoring_env: Path, served_logs: ServedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREDICTION_LOG_ROOT", str(served_logs.shifted))
    monkeypatch.setenv("DRIFT_CHECK_SEVERITY", "ERROR")
    with dg.instance_for_test() as instance:
        result = run_drift_job(instance, served_logs.day)
    assert not result.success, "a blocking check failing with ERROR fails the run"
    checks = check_results(result)
    assert checks["drift_share_within_threshold"].severity == dg.AssetCheckSeverity.ERROR
    assert not checks["drift_share_within_threshold"].passed
    assert materialization(result, "drift_report")["check_severity"] == "ERROR"


def test_a_window_too_small_to_judge_is_reported_as_such(
    monitoring_env: Path,
    served_logs: ServedLogs,
    model_store: ModelStore,
    pushgateway_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREDICTION_LOG_ROOT", str(served_logs.small))
    monkeypatch.setenv("PROMETHEUS_PUSHGATEWAY_URL", pushgateway_url)
    monkeypatch.setenv("DRIFT_CHECK_SEVERITY", "ERROR")  # not judged is never a gate
    with dg.instance_for_test() as instance:
        result = run_drift_job(instance, served_logs.day)
    assert result.success

    report = materialization(result, "drift_report")
    assert report["status"] == "insufficient_data"
    assert report["reason"] == f"window too small to judge: {SMALL_ROWS} rows < min_window_rows 30"
    assert report["window_rows"] == SMALL_ROWS
    assert report["drift_detected"] is False and report["live_accuracy_low"] is False
    # No score pretends to be a measurement: neither drift nor no drift.
    for key in ("drift_share", "prediction_psi", "dataset_drift", "evidently_report", "drift_score/petal_length"):
        assert key not in report
    html = list((monitoring_env / "reports" / "drift" / "iris" / f"date={served_logs.day}").glob("*.html"))
    assert html == []

    checks = check_results(result)
    for name, check in checks.items():
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN, name
        assert check.description.startswith("Not judged:"), check.description
        assert check.metadata["status"].value == "not_judged"

    # Only the row counts are pushed: no drift series for an alert to fire or resolve on.
    samples = scrape(pushgateway_url)
    assert list(series(samples, "ml_platform_drift_window_rows").values()) == [float(SMALL_ROWS)]
    assert series(samples, "ml_platform_drift_detected") == {}
    assert series(samples, "ml_platform_drift_share") == {}


def test_a_day_without_traffic_is_not_judged(
    monitoring_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREDICTION_LOG_ROOT", str(tmp_path / "no-logs"))
    with dg.instance_for_test() as instance:
        result = run_drift_job(instance, "2026-01-02")
    assert result.success
    assert materialization(result, "production_window")["dagster/row_count"] == 0
    report = materialization(result, "drift_report")
    assert report["status"] == "insufficient_data"
    assert report["reason"] == "no predictions of iris-random-forest logged on 2026-01-02"
    checks = check_results(result)
    assert checks["drift_share_within_threshold"].description.startswith("Not judged:")
    assert not checks["prediction_psi_within_bands"].passed
    live = checks["live_accuracy_above_minimum"]
    assert live.passed and live.metadata["status"].value == "no_data"

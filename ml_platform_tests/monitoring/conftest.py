"""Session fixtures: a registered iris model with its real reference snapshot, and real serving logs.

``model_store`` registers an iris forest the way ``candidate_model`` does
(``log_and_register_model``, run metrics logged) and writes its reference
snapshot by materializing the real ``reference_snapshot`` asset, so the
``reference_snapshot_uri`` tag and the Parquet file are the platform's own.
(Running the whole ``training_job`` costs two minutes on a shared machine;
its gates are tested in ml_platform_tests/pipeline.)

``served_logs`` starts two real serving processes for that version, sends
traffic drawn like the training data to one and traffic with shifted petal
measurements to the other, with feedback, and stops them once the logs are
flushed. Each logs into the iris folder of its own log root
(``<root>/iris``, given to serving as ``PREDICTION_LOG_DIR``; readers get the
root as ``PREDICTION_LOG_ROOT``); the partition is the real current UTC date.
The too-small case is a copy of the first process's log root taken after its
first 20 rows, i.e. the real log as it stood then.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ml_platform_tests.monitoring.helpers import (
    MODEL_NAME,
    Serving,
    pushgateway,
    send_traffic,
    start_serving,
    wait_for_rows,
    wait_ready,
)

NORMAL_ROWS = 200
SHIFTED_ROWS = 200
SMALL_ROWS = 20
SHIFT = 2.0
SHIFTED_FEATURES = ("petal_length", "petal_width")

_MONITORING_VARIABLES = (
    "PREDICTION_LOG_DIR",
    "PREDICTION_LOG_ROOT",
    "ML_PLATFORM_MODEL",
    "PRODUCTION_WINDOWS_URI",
    "DRIFT_REPORTS_URI",
    "DRIFT_REPORT_MAX_ROWS",
    "PROMETHEUS_PUSHGATEWAY_URL",
    "DRIFT_CHECK_SEVERITY",
    "DRIFT_RETRAIN_COOLDOWN_SECONDS",
    "DRIFT_RETRAIN_MAX_WINDOW_AGE_DAYS",
)


@dataclass(frozen=True)
class ModelStore:
    home: Path
    tracking_uri: str
    version: str
    snapshot_uri: str
    test_accuracy: float


@dataclass(frozen=True)
class ServedLogs:
    """Log roots (``<root>/iris/date=<day>/``) written by real serving processes."""

    day: str
    normal: Path
    shifted: Path
    small: Path
    sample_prediction: dict[str, object]
    sample_feedback: dict[str, object]


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """An MLflow sqlite store with iris-random-forest v1 and its reference snapshot."""
    import dagster as dg
    import mlflow
    import pandas as pd

    home = tmp_path_factory.mktemp("monitoring-store")
    tracking_uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("ML_PLATFORM_HOME", "MLFLOW_TRACKING_URI", "DAGSTER_HOME")}
    previous_uri = mlflow.get_tracking_uri()
    try:
        os.environ["ML_PLATFORM_HOME"] = str(home)
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        os.environ.pop("DAGSTER_HOME", None)

        from ml_platform.definitions import build_defs
        from ml_platform.ml.mlflow_store import ensure_experiment, experiment_name
        from ml_platform.ml.registry import log_and_register_model
        from ml_platform.ml.training import evaluate_model, fit_model, split_dataset
        from ml_platform.spec import load_spec
        from ml_platform_tests.registry_helpers import record_passed_gates

        spec = load_spec("iris")
        mlflow.set_experiment(experiment_id=ensure_experiment(experiment_name(spec.name)))
        frame = pd.read_csv(spec.bootstrap_path())
        dataset_path = home / "datasets" / "iris.parquet"
        dataset_path.parent.mkdir(parents=True)
        frame.to_parquet(dataset_path, index=False)
        split = split_dataset(frame, spec)
        model = fit_model(split, spec)
        metrics = evaluate_model(model, split, spec).flat_metrics()
        with mlflow.start_run() as run:
            mlflow.log_metrics(metrics)
            registered, _ = log_and_register_model(
                model, spec, split.x_train, run_id=run.info.run_id, data_version="monitoring-tests",
                metrics=metrics, extra_tags={},
            )  # fmt: skip
        record_passed_gates(mlflow.MlflowClient(), spec.model.name, registered.version)  # as the gates do
        # The real reference_snapshot asset, fed the candidate_model value it reads in training_job.
        io_dir = home / "dagster" / "io" / "iris" / "candidate_model"
        io_dir.mkdir(parents=True)
        descriptor = registered.to_dict() | {"dataset_path": str(dataset_path), "dataset": spec.name}
        (io_dir / "__unpartitioned__.json").write_text(json.dumps(descriptor))
        defs = build_defs()
        names = ("evaluation_set", "training_dataset", "candidate_model", "reference_snapshot")
        keys = [dg.AssetKey(["iris", name]) for name in names]
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                [defs.get_assets_def(key) for key in keys],
                selection=[keys[-1]],
                instance=instance,
                resources=dict(defs.resources or {}),
            )
            assert result.success
        snapshot_uri = result.output_for_node("iris__reference_snapshot")["uri"]
    finally:
        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: reset it first, then the environment.
        mlflow.set_tracking_uri(previous_uri)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return ModelStore(home, tracking_uri, registered.version, snapshot_uri, metrics["accuracy"])


def _first_line(folder: Path, pattern: str) -> dict[str, object]:
    path = sorted(folder.glob(pattern))[0]
    return json.loads(path.read_text().splitlines()[0])


@pytest.fixture(scope="session")
def served_logs(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> ServedLogs:
    """Prediction and feedback logs written by real serving processes (see the module docstring)."""
    from ml_platform.monitoring.generate import drifted_rows
    from ml_platform.spec import load_spec

    spec = load_spec("iris")
    base = tmp_path_factory.mktemp("served")
    model_uri = f"models:/{MODEL_NAME}/{model_store.version}"
    servers: list[Serving] = [
        start_serving("normal", base / "normal", model_store.tracking_uri, model_uri),
        start_serving("shifted", base / "shifted", model_store.tracking_uri, model_uri),
    ]
    normal, shifted = servers
    try:
        for server in servers:
            wait_ready(server)
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        like_training = drifted_rows(spec, SMALL_ROWS + NORMAL_ROWS, seed=11)
        send_traffic(normal, like_training.iloc[:SMALL_ROWS], spec, "early")
        wait_for_rows(normal.log_dir, "date=*/predictions-*.jsonl", SMALL_ROWS)
        wait_for_rows(normal.log_dir, "date=*/feedback-*.jsonl", SMALL_ROWS)
        small = base / "small"
        shutil.copytree(normal.log_root, small)

        send_traffic(normal, like_training.iloc[SMALL_ROWS:], spec, "normal")
        moved = drifted_rows(spec, SHIFTED_ROWS, SHIFT, features=SHIFTED_FEATURES, seed=12)
        send_traffic(shifted, moved, spec, "shifted")
        for server, rows in ((normal, SMALL_ROWS + NORMAL_ROWS), (shifted, SHIFTED_ROWS)):
            wait_for_rows(server.log_dir, "date=*/predictions-*.jsonl", rows)
            wait_for_rows(server.log_dir, "date=*/feedback-*.jsonl", rows)
    finally:
        for server in servers:
            server.process.stop()
    days = {p.name for s in servers for p in s.log_dir.iterdir()}
    if days != {f"date={day}"}:
        pytest.skip(f"the traffic crossed midnight UTC ({sorted(days)}); rerun")
    return ServedLogs(
        day=day,
        normal=normal.log_root,
        shifted=shifted.log_root,
        small=small,
        sample_prediction=_first_line(normal.log_dir, "date=*/predictions-*.jsonl"),
        sample_feedback=_first_line(normal.log_dir, "date=*/feedback-*.jsonl"),
    )


@pytest.fixture
def monitoring_env(platform_home: Path, model_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh platform home using the session's MLflow store; monitoring variables cleared."""
    for name in _MONITORING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", model_store.tracking_uri)
    return platform_home


@pytest.fixture
def pushgateway_url(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway for this test."""
    with pushgateway(tmp_path / "pushgateway") as url:
        yield url

"""Two platform models served from one platform home: their logs, metrics and /health never mix.

``main`` serves iris and ``wine`` serves wine, both with the same
``ML_PLATFORM_HOME`` and neither ``MODEL_NAME`` nor ``PREDICTION_LOG_DIR`` (the
names come from the catalog, the folders are the per-model defaults). The
monitoring reader is the platform's own (:class:`PredictionLogSource`).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pandas as pd
import pytest

from ml_platform.monitoring.backends import PredictionLogSource
from ml_platform.monitoring.logs import feedback_by_version
from ml_platform.spec import DatasetSpec, load_spec
from ml_platform_tests.serving.helpers import (
    MODEL_NAME,
    WINE_MODEL_NAME,
    MlflowStore,
    ServingProcess,
    metric_sum,
    read_jsonl,
)
from serving.config import ConfigError, load_config

pytestmark = pytest.mark.slow

ROWS_PER_REQUEST = 3
REQUESTS = 4


def _send(server: ServingProcess, spec: DatasetSpec, prefix: str) -> list[str]:
    """Predict ``REQUESTS`` requests of real dataset rows and send each one's true labels as feedback."""
    frame = pd.read_csv(spec.bootstrap_path())
    request_ids = []
    with server.client() as client:
        for i in range(REQUESTS):
            chunk = frame.iloc[i * 7 : i * 7 + ROWS_PER_REQUEST]
            request_id = f"{prefix}-{i}"
            records = json.loads(chunk[spec.feature_names].to_json(orient="records"))
            answer = client.post("/predict", json={"records": records}, headers={"X-Request-ID": request_id})
            assert answer.status_code == 200, answer.text
            labels = [int(v) for v in chunk[spec.target.name]]
            token = answer.json()["feedback_token"]
            sent = client.post("/feedback", json={"request_id": request_id, "feedback_token": token, "labels": labels})
            assert sent.status_code == 200, sent.text
            request_ids.append(request_id)
    return request_ids


def _flushed(folder: Path, request_ids: list[str], timeout: float = 20.0) -> tuple[list[dict], list[dict]]:
    """The prediction and feedback lines of ``request_ids`` once all are written."""
    wanted = set(request_ids)
    deadline = time.monotonic() + timeout
    while True:
        predictions = [r for r in read_jsonl(folder, "date=*/predictions-*.jsonl") if r["request_id"] in wanted]
        feedback = [r for r in read_jsonl(folder, "date=*/feedback-*.jsonl") if r["request_id"] in wanted]
        if (len(predictions), len(feedback)) == (len(wanted), len(wanted) * ROWS_PER_REQUEST):
            return predictions, feedback
        if time.monotonic() > deadline:
            raise AssertionError(f"{folder}: {len(predictions)} predictions, {len(feedback)} feedback lines")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def side_by_side(main_server: ServingProcess, wine_server: ServingProcess) -> dict[str, list[str]]:
    """Tagged iris and wine traffic with feedback, flushed to both models' logs."""
    tag = uuid.uuid4().hex[:8]
    sent = {
        "iris": _send(main_server, load_spec("iris"), f"iris-{tag}"),
        "wine": _send(wine_server, load_spec("wine"), f"wine-{tag}"),
    }
    _flushed(main_server.log_dir, sent["iris"])
    _flushed(wine_server.log_dir, sent["wine"])
    return sent


def test_both_servers_log_under_one_home_in_their_own_folders(
    main_server: ServingProcess, wine_server: ServingProcess, side_by_side: dict[str, list[str]]
):
    root = main_server.home / "logs" / "predictions"
    assert wine_server.home == main_server.home
    assert (main_server.log_dir, wine_server.log_dir) == (root / "iris", root / "wine")
    for model in ("iris", "wine"):
        lines = read_jsonl(root / model, "date=*/*.jsonl")
        assert lines and {line["model"] for line in lines} == {model}, "every line names its folder's model"
    iris_predictions, iris_feedback = _flushed(root / "iris", side_by_side["iris"])
    assert {r["model_name"] for r in iris_predictions} == {MODEL_NAME}
    assert {r["model"] for r in iris_feedback} == {"iris"}
    assert not [r for r in read_jsonl(root / "iris", "date=*/*.jsonl") if r["request_id"] in side_by_side["wine"]]


def test_each_models_reader_sees_only_its_own_predictions_and_feedback(
    main_server: ServingProcess, side_by_side: dict[str, list[str]]
):
    root = main_server.home / "logs" / "predictions"
    source = PredictionLogSource(str(root))
    days = sorted({p.parent.name.removeprefix("date=") for p in root.glob("*/date=*/*.jsonl")})
    seen: dict[str, set[str]] = {"iris": set(), "wine": set()}
    for day in days:
        for model in ("iris", "wine"):
            log = source.read_day(model, day, load_spec(model))
            assert log.folder == f"{root}/{model}/date={day}"
            assert all(f"/{model}/date={day}/" in path for path in log.prediction_stats.files)
            assert log.prediction_stats.other_model_lines == log.feedback_stats.other_model_lines == 0
            assert set(log.predictions["model"].astype(str)) <= {model}
            assert set(log.feedback["model"]) <= {model}
            seen[model] |= set(log.predictions["request_id"]) | set(log.feedback["request_id"])
    assert set(side_by_side["iris"]) <= seen["iris"] and not set(side_by_side["wine"]) & seen["iris"]
    assert set(side_by_side["wine"]) <= seen["wine"] and not set(side_by_side["iris"]) & seen["wine"]


def test_feedback_of_another_model_in_irises_folder_is_ignored_and_counted(
    main_server: ServingProcess, wine_server: ServingProcess, side_by_side: dict[str, list[str]], tmp_path: Path
):
    """The drift_job incident: wine's feedback lines land in iris's folder; iris's live accuracy must not see them."""
    iris_lines, _ = _flushed(main_server.log_dir, side_by_side["iris"])
    day = iris_lines[0]["timestamp"][:10]
    root = tmp_path / "predictions"
    shutil.copytree(main_server.log_dir / f"date={day}", root / "iris" / f"date={day}")
    source = PredictionLogSource(str(root))
    spec = load_spec("iris")
    clean = source.read_day("iris", day, spec)
    wine_feedback = sorted((wine_server.log_dir / f"date={day}").glob("feedback-*.jsonl"))
    assert wine_feedback
    stray = 0
    for i, path in enumerate(wine_feedback):
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        stray += len(complete.splitlines())
        (root / "iris" / f"date={day}" / f"feedback-stable-9{i}.jsonl").write_bytes(complete)

    mixed = source.read_day("iris", day, spec)

    assert mixed.feedback_stats.other_model_lines == stray > 0
    assert len(mixed.feedback) == len(clean.feedback)
    assert feedback_by_version(mixed.feedback) == feedback_by_version(clean.feedback)
    assert not set(side_by_side["wine"]) & set(mixed.feedback["request_id"])


def test_metrics_and_health_carry_the_platform_model(
    main_server: ServingProcess, wine_server: ServingProcess, mlflow_store: MlflowStore, side_by_side: dict
):
    iris, wine = main_server.metrics(), wine_server.metrics()
    wine_labels = {"model_version": mlflow_store.wine_version, "track": "stable"}
    assert metric_sum(iris, "ml_serving_requests_total", model="iris", endpoint="/predict", status="200") >= REQUESTS
    assert metric_sum(iris, "ml_serving_inference_rows_total", model="iris") >= REQUESTS * ROWS_PER_REQUEST
    assert metric_sum(iris, "ml_serving_feedback_total", model="iris") >= REQUESTS * ROWS_PER_REQUEST
    assert metric_sum(wine, "ml_serving_feedback_total", model="wine", **wine_labels) == REQUESTS * ROWS_PER_REQUEST
    assert metric_sum(wine, "ml_serving_model_info", model="wine", model_name=WINE_MODEL_NAME, **wine_labels) == 1
    for samples, model in ((iris, "iris"), (wine, "wine")):
        serving = [labels for name, labels in samples if name.startswith("ml_serving_")]
        assert serving and all(dict(labels).get("model") == model for labels in serving), model
    health = httpx.get(f"{wine_server.url}/health", timeout=10).json()
    assert health["platform_model"] == "wine" and health["model"]["name"] == WINE_MODEL_NAME


def test_the_model_name_comes_from_the_flag_the_environment_or_the_catalog():
    assert load_config([], {"MODEL_URI": f"models:/{MODEL_NAME}/1"}).model_name == "iris"
    assert load_config([], {"MODEL_URI": f"models:/{WINE_MODEL_NAME}@champion"}).model_name == "wine"
    given = load_config(["--model-name", "iris_canary"], {"MODEL_URI": "models:/x/1", "MODEL_NAME": "other"})
    assert given.model_name == "iris_canary", "the flag wins over the environment"
    assert load_config([], {"MODEL_URI": "models:/x/1", "MODEL_NAME": "churn"}).model_name == "churn"
    with pytest.raises(ConfigError, match="MODEL_NAME is required: no model of the catalog registers 'x'"):
        load_config([], {"MODEL_URI": "models:/x/1"})
    for bad in ("Iris", "../wine", "wine-1", "a" * 41, "1iris"):
        with pytest.raises(ConfigError, match="MODEL_NAME="):
            load_config([], {"MODEL_URI": "models:/x/1", "MODEL_NAME": bad})

"""Metrics aggregated across worker processes, the prediction log, and ONNX vs sklearn equivalence."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pandas as pd
import pytest

from ml_platform.spec import load_spec
from ml_platform_tests.serving.helpers import (
    IRIS_FEATURES,
    MODEL_NAME,
    MlflowStore,
    ServingProcess,
    metric_sum,
    read_jsonl,
)

pytestmark = pytest.mark.slow

PREDICTION_FIELDS = {
    "event",
    "model",
    "request_id",
    "timestamp",
    "model_name",
    "model_version",
    "track",
    "rows",
    "features",
    "predictions",
    "probabilities",
    "latency_ms",
}
FEEDBACK_FIELDS = {
    "event",
    "model",
    "request_id",
    "row",
    "timestamp",
    "label",
    "prediction",
    "correct",
    "model_version",
    "track",
}


def iris_rows() -> list[list[float]]:
    frame = pd.read_csv(load_spec("iris").bootstrap_path())
    return frame[IRIS_FEATURES].astype(float).values.tolist()


def wait_for_rows(server: ServingProcess, pattern: str, request_id: str, expected: int, timeout: float = 5.0) -> list:
    """Log lines of one request, once the background writer has flushed them (it does so within a second)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in read_jsonl(server.log_dir, pattern) if r["request_id"] == request_id]
        if len(rows) >= expected or time.monotonic() > deadline:
            return sorted(rows, key=lambda r: r.get("row", 0))
        time.sleep(0.1)


def test_request_counts_are_exact_across_two_workers(main_server: ServingProcess, mlflow_store: MlflowStore):
    """N concurrent requests, served by two worker processes, are counted exactly N times in /metrics."""
    n = 120
    labels = {"model_version": mlflow_store.onnx_version, "track": "stable"}
    before = main_server.metrics()
    tag = uuid.uuid4().hex[:8]

    with httpx.Client(base_url=main_server.url, timeout=30) as client:

        def call(i: int) -> int:
            body = {"features": [[5.0 + (i % 10) / 10, 3.0, 1.5, 0.2]]}
            return client.post("/predict", json=body, headers={"X-Request-ID": f"count-{tag}-{i}"}).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(call, range(n)))
    assert statuses == [200] * n
    after = main_server.metrics()

    def delta(name: str, **extra: str) -> float:
        return metric_sum(after, name, **labels, **extra) - metric_sum(before, name, **labels, **extra)

    assert delta("ml_serving_requests_total", endpoint="/predict", status="200") == n
    assert delta("ml_serving_request_duration_seconds_count", endpoint="/predict") == n
    assert delta("ml_serving_predictions_total") == n
    # rows counted inside the workers: the sum over both worker processes is exact too
    assert delta("ml_serving_inference_rows_total", runtime="onnx") == n
    worker_pids = {r["pid"] for r in httpx.get(f"{main_server.url}/health").json()["model"]["workers"]}
    assert len(worker_pids) == 2
    time.sleep(1.5)  # the log writers flush at least every second
    files = {p.name for p in main_server.log_dir.glob("date=*/predictions-stable-*.jsonl")}
    assert files == {f"predictions-stable-{pid}.jsonl" for pid in worker_pids}, "both workers served requests"


def test_prediction_log_lines_have_the_documented_fields(main_server: ServingProcess, mlflow_store: MlflowStore):
    """One line per request, rows as columns, values exactly as answered."""
    request_id = f"log-{uuid.uuid4().hex[:8]}"
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [7, 3, 5, 1]]
    started = datetime.now(UTC)
    response = httpx.post(f"{main_server.url}/predict", json={"features": rows}, headers={"X-Request-ID": request_id})
    answer = response.json()

    (line,) = wait_for_rows(main_server, "date=*/predictions-stable-*.jsonl", request_id, 1)

    assert set(line) == PREDICTION_FIELDS
    assert line["event"] == "prediction" and line["rows"] == 3
    assert line["model"] == "iris" and line["model_name"] == MODEL_NAME
    assert line["model_version"] == mlflow_store.onnx_version
    assert line["track"] == "stable"
    assert line["features"] == {name: [float(row[i]) for row in rows] for i, name in enumerate(IRIS_FEATURES)}
    assert line["predictions"] == answer["predictions"]
    labels = list(answer["probabilities"][0])
    assert line["probabilities"] == {label: [p[label] for p in answer["probabilities"]] for label in labels}
    assert 0 < line["latency_ms"] < 10_000
    stamp = datetime.fromisoformat(line["timestamp"])
    assert stamp.tzinfo is not None and stamp.utcoffset().total_seconds() == 0
    assert abs((stamp - started).total_seconds()) < 30
    day = stamp.strftime("%Y-%m-%d")
    assert list(main_server.log_dir.glob(f"date={day}/predictions-stable-*.jsonl"))


def test_feedback_log_rows_have_the_documented_fields(main_server: ServingProcess, mlflow_store: MlflowStore):
    request_id = f"fblog-{uuid.uuid4().hex[:8]}"
    token = httpx.post(
        f"{main_server.url}/predict",
        json={"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
        headers={"X-Request-ID": request_id},
    ).json()["feedback_token"]
    body = {"request_id": request_id, "feedback_token": token, "labels": [0, 1]}
    assert httpx.post(f"{main_server.url}/feedback", json=body).status_code == 200

    logged = wait_for_rows(main_server, "date=*/feedback-stable-*.jsonl", request_id, 2)

    assert [set(line) for line in logged] == [FEEDBACK_FIELDS] * 2
    assert {line["model"] for line in logged} == {"iris"}
    assert [(r["row"], r["label"], r["prediction"], r["correct"]) for r in logged] == [
        (0, 0, 0, True),
        (1, 1, 2, False),
    ]
    assert {r["event"] for r in logged} == {"feedback"}
    assert {r["model_version"] for r in logged} == {mlflow_store.onnx_version}
    assert {r["track"] for r in logged} == {"stable"}
    assert all(datetime.fromisoformat(r["timestamp"]).utcoffset().total_seconds() == 0 for r in logged)


def test_onnx_and_sklearn_fallback_predict_the_same(
    main_server: ServingProcess, fallback_server: ServingProcess, mlflow_store: MlflowStore
):
    """The same fitted forest served through ONNX and through sklearn (no ONNX graph) agrees on every row."""
    rows = iris_rows() + [[x / 2, 3.0, x / 3, x / 5] for x in range(1, 20)]
    onnx = httpx.post(f"{main_server.url}/predict", json={"features": rows}, timeout=60).json()
    sklearn = httpx.post(f"{fallback_server.url}/predict", json={"features": rows}, timeout=60).json()

    assert onnx["runtime"] == "onnx"
    assert sklearn["runtime"] == "sklearn"
    assert sklearn["model_version"] == mlflow_store.sklearn_version
    assert sklearn["track"] == "canary"
    assert sklearn["predictions"] == onnx["predictions"]
    assert sklearn["class_labels"] == onnx["class_labels"]
    for ours, theirs in zip(onnx["probabilities"], sklearn["probabilities"], strict=True):
        assert ours == pytest.approx(theirs, abs=1e-4)
    health = httpx.get(f"{fallback_server.url}/health").json()
    assert health["model"]["runtime"] == "sklearn"
    info = metric_sum(fallback_server.metrics(), "ml_serving_model_info", runtime="sklearn", track="canary")
    assert info == 1

"""Every endpoint of a real serving process: /predict, /feedback, /health, /metrics, /admin/reload."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from ml_platform_tests.serving.conftest import ADMIN_TOKEN
from ml_platform_tests.serving.helpers import IRIS_FEATURES, MODEL_NAME, MlflowStore, ServingProcess, metric_sum

pytestmark = pytest.mark.slow

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
LABELS = ["setosa", "versicolor", "virginica"]


def predict(server: ServingProcess, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json=body, headers=headers, timeout=30)


def test_predict_features_answers_every_row_with_probabilities(main_server: ServingProcess, mlflow_store: MlflowStore):
    response = predict(main_server, {"features": [SETOSA, VIRGINICA]})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == MODEL_NAME
    assert body["model_version"] == mlflow_store.onnx_version
    assert body["track"] == "stable"
    assert body["runtime"] == "onnx"
    assert body["predictions"] == [0, 2]
    assert body["class_labels"] == ["setosa", "virginica"]
    assert [set(p) for p in body["probabilities"]] == [set(LABELS)] * 2
    for row, predicted in zip(body["probabilities"], body["class_labels"], strict=True):
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-4)
        assert max(row, key=row.get) == predicted


def test_predict_records_equal_features(main_server: ServingProcess):
    records = [dict(zip(IRIS_FEATURES, row, strict=True)) for row in (SETOSA, VIRGINICA)]

    by_records = predict(main_server, {"records": records}).json()
    by_features = predict(main_server, {"features": [SETOSA, VIRGINICA]}).json()

    assert by_records["predictions"] == by_features["predictions"]
    assert by_records["probabilities"] == by_features["probabilities"]


def test_predict_accepts_json_media_type_parameters(main_server: ServingProcess):
    response = httpx.post(
        f"{main_server.url}/predict",
        content=b'{"features": [[5.1, 3.5, 1.4, 0.2]]}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200
    assert response.json()["predictions"] == [0]


def test_out_of_range_values_are_served_not_rejected(main_server: ServingProcess):
    """Ranges in the spec are drift signals, not validation rules, at serving time."""
    response = predict(main_server, {"features": [[99.0, -5.0, 1e6, 0]]})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1


def test_request_id_is_echoed_when_given(main_server: ServingProcess):
    request_id = f"client-{uuid.uuid4().hex[:8]}.v1_A"
    response = predict(main_server, {"features": [SETOSA]}, **{"X-Request-ID": request_id})

    assert response.headers["x-request-id"] == request_id
    assert response.json()["request_id"] == request_id


def test_request_id_is_generated_when_absent(main_server: ServingProcess):
    first = predict(main_server, {"features": [SETOSA]})
    second = predict(main_server, {"features": [SETOSA]})

    for response in (first, second):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("bad_id", ["has space", "x" * 129, "semi;colon", "ünï"])
def test_invalid_request_id_is_refused(main_server: ServingProcess, bad_id: str):
    response = httpx.post(
        f"{main_server.url}/predict",
        content=b'{"features": [[5.1, 3.5, 1.4, 0.2]]}',
        headers={"Content-Type": "application/json", "X-Request-ID": bad_id.encode()},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid X-Request-ID"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])  # a usable id still comes back


def test_error_responses_carry_a_request_id_too(main_server: ServingProcess):
    response = httpx.post(
        f"{main_server.url}/predict", content=b"{}", headers={"Content-Type": "application/json", "X-Request-ID": "e-1"}
    )
    assert response.status_code == 422
    assert response.headers["x-request-id"] == "e-1"


def test_health_reports_model_and_registry(main_server: ServingProcess, mlflow_store: MlflowStore):
    response = httpx.get(f"{main_server.url}/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["problems"] == []
    assert body["platform_model"] == "iris", "derived from the catalog: iris registers iris-random-forest"
    model = body["model"]
    assert model["name"] == MODEL_NAME
    assert model["version"] == mlflow_store.onnx_version
    assert model["runtime"] == "onnx"
    assert model["workers_ready"] is True
    assert len(model["workers"]) == 2
    assert {w["model_version"] for w in model["workers"]} == {mlflow_store.onnx_version}
    assert model["swap_in_progress"] is False
    registry = body["mlflow"]
    assert registry["tracking_uri"] is None  # the store's location only for the admin:
    admin = httpx.get(f"{main_server.url}/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert admin["mlflow"]["tracking_uri"] == mlflow_store.tracking_uri
    assert registry["reachable"] is True
    assert registry["server_version"] is None  # a sqlite store has no server
    assert registry["model_uri"] == f"models:/{MODEL_NAME}/{mlflow_store.onnx_version}"
    assert registry["resolved_version"] == mlflow_store.onnx_version
    assert registry["loaded_at"].endswith("Z")
    assert registry["last_refresh_error"] is None


def test_metrics_expose_the_contract_names(main_server: ServingProcess, mlflow_store: MlflowStore):
    predict(main_server, {"features": [SETOSA, VIRGINICA]})
    httpx.post(f"{main_server.url}/predict", content=b"{}", headers={"Content-Type": "application/json"})

    response = httpx.get(f"{main_server.url}/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = main_server.metrics()
    version = mlflow_store.onnx_version
    common = {"model": "iris", "model_version": version, "track": "stable"}
    assert metric_sum(samples, "ml_serving_requests_total", endpoint="/predict", status="200", **common) >= 1
    assert metric_sum(samples, "ml_serving_requests_total", endpoint="/predict", status="422", **common) >= 1
    assert metric_sum(samples, "ml_serving_request_duration_seconds_count", endpoint="/predict", **common) >= 2
    assert (
        metric_sum(samples, "ml_serving_request_duration_seconds_bucket", endpoint="/predict", le="5.0", **common) >= 2
    )
    assert metric_sum(samples, "ml_serving_predictions_total", predicted_class="setosa", **common) >= 1
    assert metric_sum(samples, "ml_serving_predictions_total", predicted_class="virginica", **common) >= 1
    info = {"model_name": MODEL_NAME, "runtime": "onnx", **common}
    assert metric_sum(samples, "ml_serving_model_info", **info) == 1


def feedback(server: ServingProcess, request_id: str, token: str, **body: object) -> httpx.Response:
    """POST /feedback with the prediction's receipt."""
    return httpx.post(
        f"{server.url}/feedback", json={"request_id": request_id, "feedback_token": token, **body}, timeout=30
    )


def test_feedback_updates_live_accuracy(main_server: ServingProcess, mlflow_store: MlflowStore):
    request_id = f"fb-{uuid.uuid4().hex[:12]}"
    predicted = predict(main_server, {"features": [SETOSA, VIRGINICA, SETOSA]}, **{"X-Request-ID": request_id}).json()
    assert predicted["predictions"] == [0, 2, 0]
    token = predicted["feedback_token"]
    before = main_server.metrics()

    whole = feedback(main_server, request_id, token, labels=["setosa", 1])
    assert whole.status_code == 422  # 3 rows predicted, 2 labels sent
    first = feedback(main_server, request_id, token, row=0, label="setosa")
    second = feedback(main_server, request_id, token, row=1, label=1)
    again = feedback(main_server, request_id, token, row=1, label=2)

    assert first.status_code == 200
    assert first.json() == {
        "request_id": request_id,
        "model_version": mlflow_store.onnx_version,
        "accepted": 1,
        "correct": 1,
        "live_accuracy": pytest.approx(first.json()["live_accuracy"]),
    }
    assert second.status_code == 200
    assert second.json()["correct"] == 0  # predicted virginica, truth versicolor
    assert again.status_code == 409
    after = main_server.metrics()
    labels = {"model_version": mlflow_store.onnx_version, "track": "stable"}
    correct = metric_sum(after, "ml_serving_feedback_total", outcome="correct", **labels)
    incorrect = metric_sum(after, "ml_serving_feedback_total", outcome="incorrect", **labels)
    assert correct - metric_sum(before, "ml_serving_feedback_total", outcome="correct", **labels) == 1
    assert incorrect - metric_sum(before, "ml_serving_feedback_total", outcome="incorrect", **labels) == 1
    live = metric_sum(after, "ml_serving_live_accuracy", **labels)
    assert live == pytest.approx(correct / (correct + incorrect))
    assert second.json()["live_accuracy"] == pytest.approx(live)


def test_feedback_with_all_labels_at_once(main_server: ServingProcess):
    request_id = f"fb-all-{uuid.uuid4().hex[:8]}"
    token = predict(main_server, {"features": [SETOSA, VIRGINICA]}, **{"X-Request-ID": request_id}).json()[
        "feedback_token"
    ]

    response = feedback(main_server, request_id, token, labels=[0, "virginica"])

    assert response.status_code == 200
    assert response.json()["accepted"] == 2
    assert response.json()["correct"] == 2


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        # the receipt names another request id (receipts are self-contained: no lookup, so no 404)
        ({"request_id": "never-predicted", "labels": [0]}, 403, "invalid feedback token"),
        ({"request_id": "PLACEHOLDER", "labels": ["daisy"]}, 422, "unknown label"),
        ({"request_id": "PLACEHOLDER", "labels": [7]}, 422, "unknown label"),
        ({"request_id": "PLACEHOLDER", "labels": [True]}, 422, "invalid request"),
        ({"request_id": "PLACEHOLDER", "row": 5, "label": 0}, 422, "row out of range"),
        ({"request_id": "PLACEHOLDER", "row": 0}, 422, "invalid request"),
        ({"request_id": "PLACEHOLDER", "labels": [0], "row": 0, "label": 0}, 422, "invalid request"),
        ({"request_id": "PLACEHOLDER", "labels": []}, 422, "invalid request"),
        ({"labels": [0]}, 422, "invalid request"),
        ({"request_id": "PLACEHOLDER", "labels": [0], "extra": 1}, 422, "invalid request"),
    ],
)
def test_bad_feedback_is_refused(main_server: ServingProcess, body: dict, status: int, error: str):
    request_id = f"fb-bad-{uuid.uuid4().hex[:8]}"
    token = predict(main_server, {"features": [SETOSA]}, **{"X-Request-ID": request_id}).json()["feedback_token"]
    body = {**body, "feedback_token": token}
    if body.get("request_id") == "PLACEHOLDER":
        body = {**body, "request_id": request_id}

    response = httpx.post(f"{main_server.url}/feedback", json=body)

    assert response.status_code == status
    assert response.json()["error"] == error
    assert "detail" in response.json()


def test_feedback_needs_json(main_server: ServingProcess):
    assert httpx.post(f"{main_server.url}/feedback", content=b"request_id=x").status_code == 415
    malformed = httpx.post(f"{main_server.url}/feedback", content=b"{", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400


def test_admin_reload_is_disabled_without_a_token(fallback_server: ServingProcess):
    response = httpx.post(f"{fallback_server.url}/admin/reload", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 403
    assert response.json()["error"] == "admin API disabled"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"X-Admin-Token": "wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}],
)
def test_admin_reload_refuses_a_wrong_or_missing_token(main_server: ServingProcess, headers: dict):
    response = httpx.post(f"{main_server.url}/admin/reload", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Authorization", "X-Admin-Token"])
def test_admin_reload_with_the_token(main_server: ServingProcess, mlflow_store: MlflowStore, header: str):
    value = f"Bearer {ADMIN_TOKEN}" if header == "Authorization" else ADMIN_TOKEN
    response = httpx.post(f"{main_server.url}/admin/reload", headers={header: value}, timeout=60)

    assert response.status_code == 200
    assert response.json() == {
        "changed": False,  # a pinned version cannot move
        "previous_version": mlflow_store.onnx_version,
        "version": mlflow_store.onnx_version,
        "error": None,
    }
    assert httpx.get(f"{main_server.url}/health").json()["mlflow"]["last_refresh_at"] is not None


def test_unknown_paths_and_methods_get_json_errors(main_server: ServingProcess):
    missing = httpx.get(f"{main_server.url}/nope")
    wrong_method = httpx.get(f"{main_server.url}/predict")

    assert missing.status_code == 404
    assert missing.json()["error"] == "not found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method not allowed"


def test_openapi_describes_request_bodies(main_server: ServingProcess):
    spec = httpx.get(f"{main_server.url}/openapi.json").json()

    predict_body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    feedback_body = spec["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(predict_body["properties"]) == {"features", "records"}
    assert predict_body["properties"]["records"]["items"]["required"] == IRIS_FEATURES
    assert len(predict_body["properties"]["features"]["items"]["prefixItems"]) == 4
    assert predict_body["properties"]["features"]["maxItems"] == 2000
    # Exactly what the parser accepts: two closed shapes, both requiring the prediction's receipt.
    by_labels, by_row = feedback_body["oneOf"]
    assert by_labels["required"] == ["request_id", "feedback_token", "labels"]
    assert by_row["required"] == ["request_id", "feedback_token", "row", "label"]
    assert by_labels["additionalProperties"] is False and by_row["additionalProperties"] is False
    assert set(by_labels["properties"]) == {"request_id", "feedback_token", "labels"}
    assert set(by_row["properties"]) == {"request_id", "feedback_token", "row", "label"}
    assert by_labels["properties"]["feedback_token"]["pattern"] == by_row["properties"]["feedback_token"]["pattern"]
    responses = spec["paths"]["/feedback"]["post"]["responses"]
    assert {"401", "403", "404", "409"} <= set(responses)
    assert {"/health", "/metrics", "/admin/reload"} <= set(spec["paths"])

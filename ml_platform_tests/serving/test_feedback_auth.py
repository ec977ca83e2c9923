"""Feedback is bound to the prediction it labels: attacks on /feedback against real serving processes.

Live accuracy from /feedback gates canary promotion, so a caller who could label
any request id could push a canary either way. Every /predict answer carries a
signed, self-contained receipt (``feedback_token``: version, track and predicted classes under an HMAC);
/feedback needs it, verifies it on any replica, and counts each row at most once (a shared ledger).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from ml_platform_tests.serving.conftest import FEEDBACK_KEY
from ml_platform_tests.serving.helpers import (
    MODEL_NAME,
    MlflowStore,
    ServingProcess,
    metric_sum,
    read_jsonl,
)
from serving.config import ConfigError, load_config

pytestmark = pytest.mark.slow

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]


def issued_of(token: str) -> int:
    """The issued-at (Unix seconds) a receipt states: the first 4 bytes of its payload."""
    payload = token.split(".")[1]
    return int.from_bytes(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))[:4], "big")


def expected_token(
    key: bytes, version: str, track: str, request_id: str, classes: list[int], issued: int | None = None
) -> str:
    """The documented receipt format, computed independently of the server's code."""
    issued_bytes = int(time.time() if issued is None else issued).to_bytes(4, "big")
    class_bytes = np.asarray(classes, dtype="<u2").tobytes()
    parts = [b"v2", b"iris", MODEL_NAME.encode(), version.encode(), track.encode(), request_id.encode(), b""]
    message = b"\x00".join(parts)  # platform model, registered model, version, track, request id
    message += issued_bytes + class_bytes
    mac = hmac.new(key, message, hashlib.sha256).digest()[:16]
    payload = issued_bytes + version.encode() + b"\x00" + track.encode() + b"\x00" + class_bytes
    encode = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # noqa: E731
    return f"v2.{encode(payload)}.{encode(mac)}"


def predict(server: ServingProcess, rows: list[list[float]], request_id: str | None = None) -> dict:
    request_id = request_id or f"auth-{uuid.uuid4().hex[:12]}"
    response = httpx.post(f"{server.url}/predict", json={"features": rows}, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    return response.json()


def post_feedback(server: ServingProcess, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/feedback", json=body, timeout=30)


def counted(server: ServingProcess, version: str, track: str) -> tuple[float, float, float]:
    """(correct, incorrect, live accuracy) as /metrics reports them for one version and track."""
    samples = server.metrics()
    labels = {"model_version": version, "track": track}
    return (
        metric_sum(samples, "ml_serving_feedback_total", outcome="correct", **labels),
        metric_sum(samples, "ml_serving_feedback_total", outcome="incorrect", **labels),
        metric_sum(samples, "ml_serving_live_accuracy", **labels),
    )


def logged_feedback(server: ServingProcess, request_id: str, rows: int, timeout: float = 20.0) -> list[dict]:
    """The feedback log lines of ``request_id`` once ``rows`` of them are flushed."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [r for r in read_jsonl(server.log_dir, "date=*/feedback-*.jsonl") if r["request_id"] == request_id]
        if len(lines) >= rows or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def assert_refused(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == error
    assert body["detail"]


def test_predict_answers_carry_the_documented_receipt(main_server: ServingProcess, mlflow_store: MlflowStore):
    answer = predict(main_server, [SETOSA, VIRGINICA])

    token = answer["feedback_token"]
    assert abs(issued_of(token) - time.time()) < 120
    assert token == expected_token(
        FEEDBACK_KEY.encode(), mlflow_store.onnx_version, "stable", answer["request_id"], [0, 2], issued_of(token)
    )


def test_forged_feedback_is_refused_and_counts_nothing(main_server: ServingProcess, mlflow_store: MlflowStore):
    answer = predict(main_server, [SETOSA])  # a real request id: only its receipt is unknown to the attacker
    request_id, version = answer["request_id"], mlflow_store.onnx_version
    before = counted(main_server, version, "stable")
    wrong = "virginica"  # a forger labels the (correct) setosa prediction as wrong

    missing = post_feedback(main_server, {"request_id": request_id, "labels": [wrong]})
    malformed = post_feedback(main_server, {"request_id": request_id, "feedback_token": "x", "labels": [wrong]})
    genuine_payload = answer["feedback_token"].split(".")[1]
    made_up = f"v2.{genuine_payload}." + base64.urlsafe_b64encode(bytes(16)).rstrip(b"=").decode()
    forged = post_feedback(main_server, {"request_id": request_id, "feedback_token": made_up, "labels": [wrong]})
    other_key = expected_token(b"k" * 32, version, "stable", request_id, [0])  # right format, wrong key
    foreign = post_feedback(main_server, {"request_id": request_id, "feedback_token": other_key, "row": 0, "label": 2})
    # the receipt of the right prediction, but claiming another predicted class
    # the genuine receipt with its payload edited to claim another predicted class (and another version: a
    # receipt is self-contained, so the MAC must bind everything the payload states)
    _, payload, mac = answer["feedback_token"].split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    edited = raw[:-2] + np.asarray([2], dtype="<u2").tobytes()
    other_class = "v2." + base64.urlsafe_b64encode(edited).rstrip(b"=").decode() + "." + mac
    other_version = raw[:4] + b"999" + raw[4 + len(version) :]
    aged = (0).to_bytes(4, "big") + raw[4:]
    relabelled = [
        "v2." + base64.urlsafe_b64encode(forged).rstrip(b"=").decode() + "." + mac for forged in (other_version, aged)
    ]
    reclassed = post_feedback(main_server, {"request_id": request_id, "feedback_token": other_class, "labels": [2]})

    assert_refused(missing, 401, "feedback token required")
    tampered = [
        post_feedback(main_server, {"request_id": request_id, "feedback_token": token, "labels": [wrong]})
        for token in relabelled
    ]
    for response in (malformed, forged, foreign, reclassed, *tampered):
        assert_refused(response, 403, "invalid feedback token")
    assert counted(main_server, version, "stable") == before
    # The genuine receipt still works afterwards: nothing was marked as labelled, and the feedback log (written
    # in order) holds only this one line for the request.
    genuine = post_feedback(
        main_server, {"request_id": request_id, "feedback_token": answer["feedback_token"], "labels": ["setosa"]}
    )
    assert genuine.status_code == 200, genuine.text
    assert genuine.json()["correct"] == 1
    assert [(r["label"], r["prediction"]) for r in logged_feedback(main_server, request_id, 1)] == [(0, 0)]


def test_a_receipt_counts_once_and_a_replay_is_409(main_server: ServingProcess, mlflow_store: MlflowStore):
    answer = predict(main_server, [SETOSA, VIRGINICA])
    version = mlflow_store.onnx_version
    body = {"request_id": answer["request_id"], "feedback_token": answer["feedback_token"], "labels": [0, 1]}
    correct, incorrect, _ = counted(main_server, version, "stable")

    first = post_feedback(main_server, body)
    replay = post_feedback(main_server, body)
    per_row = post_feedback(
        main_server, {**{k: body[k] for k in ("request_id", "feedback_token")}, "row": 1, "label": 2}
    )

    assert first.status_code == 200 and first.json()["accepted"] == 2
    assert_refused(replay, 409, "feedback already recorded")
    assert_refused(per_row, 409, "feedback already recorded")
    after_correct, after_incorrect, live = counted(main_server, version, "stable")
    assert (after_correct - correct, after_incorrect - incorrect) == (1, 1)
    assert live == pytest.approx(after_correct / (after_correct + after_incorrect))
    assert len(logged_feedback(main_server, answer["request_id"], 2)) == 2


def test_a_receipt_labels_only_its_own_request(main_server: ServingProcess, mlflow_store: MlflowStore):
    first = predict(main_server, [SETOSA])
    second = predict(main_server, [SETOSA])  # same rows, same classes, same version: only the id differs
    before = counted(main_server, mlflow_store.onnx_version, "stable")

    swapped = post_feedback(
        main_server, {"request_id": second["request_id"], "feedback_token": first["feedback_token"], "labels": [1]}
    )

    assert_refused(swapped, 403, "invalid feedback token")
    assert counted(main_server, mlflow_store.onnx_version, "stable") == before


def test_a_receipt_from_a_server_with_another_key_is_refused(
    main_server: ServingProcess, hotswap_server: ServingProcess, mlflow_store: MlflowStore
):
    request_id = f"auth-cross-{uuid.uuid4().hex[:8]}"
    ours = predict(main_server, [SETOSA], request_id)
    theirs = predict(hotswap_server, [SETOSA], request_id)  # hotswap generated its own key at start
    before = counted(main_server, mlflow_store.onnx_version, "stable")

    crossed = post_feedback(
        main_server, {"request_id": request_id, "feedback_token": theirs["feedback_token"], "labels": [1]}
    )

    assert theirs["feedback_token"] != ours["feedback_token"]
    assert_refused(crossed, 403, "invalid feedback token")
    assert counted(main_server, mlflow_store.onnx_version, "stable") == before


def test_servers_configured_with_one_key_sign_and_verify_alike(
    main_server: ServingProcess, fallback_server: ServingProcess, mlflow_store: MlflowStore
):
    """main (stable, ONNX) and fallback (canary, sklearn) are started with the same FEEDBACK_SIGNING_KEY."""
    for server, version, track in (
        (main_server, mlflow_store.onnx_version, "stable"),
        (fallback_server, mlflow_store.sklearn_version, "canary"),
    ):
        answer = predict(server, [VIRGINICA])
        token = answer["feedback_token"]
        assert token == expected_token(
            FEEDBACK_KEY.encode(), version, track, answer["request_id"], [2], issued_of(token)
        ), server.name
        body = {"request_id": answer["request_id"], "feedback_token": answer["feedback_token"], "labels": [2]}
        response = post_feedback(server, body)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == version


def test_the_traffic_simulator_sends_receipts_and_produces_live_accuracy(
    fallback_server: ServingProcess, mlflow_store: MlflowStore
):
    from ml_platform.simulate import TrafficSimulator

    version = mlflow_store.sklearn_version
    correct, incorrect, _ = counted(fallback_server, version, "canary")

    report = TrafficSimulator(fallback_server.url, rate=40, concurrency=2).run(1.5)

    assert report.predictions_ok > 10 and report.predictions_failed == 0
    assert report.feedback_ok == report.predictions_ok and report.feedback_failed == 0, report.failures
    after_correct, after_incorrect, live = counted(fallback_server, version, "canary")
    assert after_correct + after_incorrect - correct - incorrect == report.feedback_ok
    assert 0.5 < live <= 1.0


# -- configuration (no server needed) ------------------------------------------------------------


def test_the_signing_key_comes_from_the_environment_or_a_file(tmp_path: Path):
    base = {"MODEL_URI": f"models:/{MODEL_NAME}/1"}
    key_file = tmp_path / "feedback.key"
    key_file.write_text("f" * 64 + "\n")

    from_value = load_config([], {**base, "FEEDBACK_SIGNING_KEY": FEEDBACK_KEY})
    from_file = load_config([], {**base, "FEEDBACK_SIGNING_KEY_FILE": str(key_file)})
    generated = [load_config([], base) for _ in range(2)]

    assert (from_value.feedback_signing_key, from_value.feedback_key_source) == (
        FEEDBACK_KEY.encode(),
        "FEEDBACK_SIGNING_KEY",
    )
    assert (from_file.feedback_signing_key, from_file.feedback_key_source) == (b"f" * 64, "FEEDBACK_SIGNING_KEY_FILE")
    assert {c.feedback_key_source for c in generated} == {"generated"}
    assert generated[0].feedback_signing_key != generated[1].feedback_signing_key
    assert len(generated[0].feedback_signing_key) >= 32
    assert FEEDBACK_KEY not in repr(from_value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEEDBACK_SIGNING_KEY": "short"}, "at least 32 bytes"),
        ({"FEEDBACK_SIGNING_KEY": FEEDBACK_KEY, "FEEDBACK_SIGNING_KEY_FILE": "/etc/hostname"}, "not both"),
        ({"FEEDBACK_SIGNING_KEY_FILE": "/nonexistent/feedback.key"}, "cannot read"),
    ],
)
def test_a_bad_signing_key_is_a_configuration_error(env: dict, message: str):
    with pytest.raises(ConfigError, match=message) as raised:
        load_config([], {"MODEL_URI": f"models:/{MODEL_NAME}/1", **env})
    assert env.get("FEEDBACK_SIGNING_KEY", "<unset>") not in str(raised.value)  # a key is never echoed


TOKEN = "v2." + "A" * 16 + "." + "A" * 22
FEEDBACK_BODIES = [
    {"request_id": "r1", "feedback_token": TOKEN, "labels": [0, "virginica"]},
    {"request_id": "r1", "feedback_token": TOKEN, "labels": [1.0]},  # JSON Schema: 1.0 is the enum's 1
    {"request_id": "r1", "feedback_token": TOKEN, "row": 3, "label": "setosa"},
    {"request_id": "r1", "feedback_token": TOKEN, "row": 569.0, "label": 2},  # an integral number is an integer
    {"request_id": "r1", "labels": [0]},  # no receipt
    {"request_id": "r1", "feedback_token": "v2.short", "labels": [0]},
    {"request_id": "r1", "feedback_token": "v1." + "A" * 22, "labels": [0]},  # the retired v1 format
    {"request_id": "r1", "feedback_token": TOKEN, "labels": [0], "row": 0, "label": 0},  # both shapes at once
    {"request_id": "r1", "feedback_token": TOKEN, "row": 0},
    {"request_id": "r1", "feedback_token": TOKEN, "label": 0},
    {"request_id": "r1", "feedback_token": TOKEN, "labels": []},
    {"request_id": "r1", "feedback_token": TOKEN, "labels": [0], "extra": True},
    {"request_id": "r1", "feedback_token": TOKEN, "labels": [True]},
    {"request_id": "r1", "feedback_token": TOKEN, "labels": [1.5]},
    {"request_id": "r1", "feedback_token": TOKEN, "row": 0.5, "label": 0},
    {"request_id": "r1", "feedback_token": TOKEN, "row": -1, "label": 0},
    {"request_id": "r 1", "feedback_token": TOKEN, "labels": [0]},
    {"feedback_token": TOKEN, "labels": [0]},
]


@pytest.mark.parametrize("body", FEEDBACK_BODIES, ids=range(len(FEEDBACK_BODIES)))
def test_the_feedback_parser_accepts_exactly_the_published_schema(body: dict):
    """Schemathesis' contract checks, deterministic: schema-valid bodies parse, schema-invalid ones are refused."""
    import json

    import jsonschema

    from ml_platform.spec import load_spec
    from serving.schema import RequestError, RequestSchema

    schema = RequestSchema(load_spec("iris"), max_rows=100)
    valid = jsonschema.Draft202012Validator(schema.feedback_json_schema()).is_valid(body)
    try:
        schema.parse_feedback(json.dumps(body).encode())
        accepted = True
    except RequestError as exc:
        accepted = False
        assert exc.status in (401, 403, 422), exc.status
    assert accepted == valid

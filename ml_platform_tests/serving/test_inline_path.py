"""Small requests answered in the API process (serving.inline, serving.direct) exactly as a worker answers them.

``main_server`` sends everything through LitServe's workers (``INLINE_MAX_ROWS=0``); the server here runs the
defaults: single rows are answered by the API process itself, straight from the HTTP protocol, and requests over
``INLINE_MAX_ROWS`` rows go to the worker. Bodies, errors, receipts, metrics and log lines must not differ.
"""

from __future__ import annotations

import json
import resource
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from ml_platform_tests.serving.conftest import FEEDBACK_KEY
from ml_platform_tests.serving.helpers import (
    MODEL_NAME,
    MlflowStore,
    ServingProcess,
    metric_sum,
    read_jsonl,
    running,
    sigterm_under_load,
)

pytestmark = pytest.mark.slow

ROW = [5.8, 2.7, 5.1, 1.9]
INLINE_MAX_ROWS = 64  # the default


@pytest.fixture(scope="module")
def inline_server(mlflow_store: MlflowStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingProcess]:
    server = ServingProcess(
        "inline",
        tmp_path_factory.mktemp("inline"),
        {
            "MLFLOW_TRACKING_URI": mlflow_store.tracking_uri,
            "MODEL_URI": f"models:/{MODEL_NAME}/{mlflow_store.onnx_version}",
            "WORKERS": "1",
            "FEEDBACK_SIGNING_KEY": FEEDBACK_KEY,
            # these tests follow one API process (its pid, log file, file-size limit); test_api_servers.py: two
            "API_SERVERS": "1",
        },
    )
    with running(server):
        yield server


def api_pid(server: ServingProcess) -> int:
    inline = httpx.get(f"{server.url}/health", timeout=10).json()["model"]["inline"]
    assert inline["error"] is None and inline["runtime"] == "onnx" and inline["max_rows"] == INLINE_MAX_ROWS
    return int(inline["pid"])


def worker_pid(server: ServingProcess) -> int:
    (worker,) = httpx.get(f"{server.url}/health", timeout=10).json()["model"]["workers"]
    return int(worker["pid"])


def logged_by(server: ServingProcess, request_ids: set[str], timeout: float = 10.0) -> dict[str, str]:
    """``{request id: log file name}`` once every id is in the prediction log."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for path in server.log_dir.glob("date=*/predictions-*.jsonl"):
            for line in path.read_text().splitlines():
                request_id = json.loads(line)["request_id"]
                if request_id in request_ids:
                    found[request_id] = path.name
        if set(found) == request_ids or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def post(server: ServingProcess, body: object, request_id: str | None = None, **headers: str) -> httpx.Response:
    if request_id:
        headers["X-Request-ID"] = request_id
    return httpx.post(f"{server.url}/predict", json=body, headers=headers, timeout=30)


def test_small_requests_are_answered_by_the_api_process_and_large_ones_by_the_worker(inline_server: ServingProcess):
    tag = uuid.uuid4().hex[:8]
    small, large = f"small-{tag}", f"large-{tag}"
    answered_small = post(inline_server, {"features": [ROW]}, small)
    answered_large = post(inline_server, {"features": [ROW] * (INLINE_MAX_ROWS + 1)}, large)
    assert answered_small.status_code == answered_large.status_code == 200
    assert answered_small.headers["x-request-id"] == small and answered_small.json()["request_id"] == small
    assert answered_small.headers["content-type"] == "application/json"

    files = logged_by(inline_server, {small, large})
    assert files == {
        small: f"predictions-stable-{api_pid(inline_server)}.jsonl",
        large: f"predictions-stable-{worker_pid(inline_server)}.jsonl",
    }
    first, rest = answered_small.json(), answered_large.json()
    for key in ("model_name", "model_version", "track", "runtime"):
        assert first[key] == rest[key]
    assert first["predictions"] == rest["predictions"][:1]
    assert first["probabilities"] == rest["probabilities"][:1]
    assert first["class_labels"] == rest["class_labels"][:1]


def test_the_api_process_answers_like_the_workers(
    inline_server: ServingProcess, main_server: ServingProcess, mlflow_store: MlflowStore
):
    """Same rows to the inline server and to main (workers only): the same answers, the same errors."""
    rows = [[4.9, 3.0, 1.4, 0.2], [6.4, 3.2, 4.5, 1.5], [7.7, 2.6, 6.9, 2.3], ROW]
    for body in (
        {"features": rows},
        {
            "records": [
                dict(zip(["sepal_length", "sepal_width", "petal_length", "petal_width"], r, strict=True)) for r in rows
            ]
        },
    ):
        ours, theirs = post(inline_server, body).json(), post(main_server, body).json()
        for key in ("model_version", "runtime", "predictions", "probabilities", "class_labels"):
            assert ours[key] == theirs[key], key

    bad_bodies: list[bytes] = [
        b"{not json",
        b"[]",
        b'{"features": []}',
        b'{"features": [[1, 2, 3]]}',
        b'{"features": [[true, 1, 2, 3]]}',
        b'{"features": [["1", 1, 2, 3]]}',
        b'{"features": [[1e39, 1, 2, 3]]}',
        b'{"features": [[1, 2, 3, 4]], "records": []}',
        b'{"records": [{"sepal_length": 1}]}',
    ]
    for body in bad_bodies:
        ours = httpx.post(f"{inline_server.url}/predict", content=body, headers={"Content-Type": "application/json"})
        theirs = httpx.post(f"{main_server.url}/predict", content=body, headers={"Content-Type": "application/json"})
        assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), body
        assert ours.status_code in (400, 422), body
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/json", "X-Request-ID": "bad id!"}):
        ours = httpx.post(f"{inline_server.url}/predict", content=b'{"features": [[1, 2, 3, 4]]}', headers=headers)
        theirs = httpx.post(f"{main_server.url}/predict", content=b'{"features": [[1, 2, 3, 4]]}', headers=headers)
        assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())
        assert ours.status_code in (400, 415)


def test_feedback_and_metrics_count_inline_predictions_exactly(
    inline_server: ServingProcess, mlflow_store: MlflowStore
):
    labels = {"model_version": mlflow_store.onnx_version, "track": "stable"}
    before = inline_server.metrics()
    tag = uuid.uuid4().hex[:8]
    n = 60
    with httpx.Client(base_url=inline_server.url, timeout=30) as client:
        answers = [
            client.post("/predict", json={"features": [ROW]}, headers={"X-Request-ID": f"count-{tag}-{i}"})
            for i in range(n)
        ]
        assert [a.status_code for a in answers] == [200] * n
        first = answers[0].json()
        feedback = client.post(
            "/feedback",
            json={"request_id": first["request_id"], "feedback_token": first["feedback_token"], "labels": [2]},
        )
        assert feedback.status_code == 200, feedback.text
        assert feedback.json()["accepted"] == 1
        forged = client.post(
            "/feedback",
            json={
                "request_id": answers[1].json()["request_id"],
                "feedback_token": first["feedback_token"],
                "labels": [2],
            },
        )
        assert forged.status_code == 403
    after = inline_server.metrics()

    def delta(name: str, **extra: str) -> float:
        return metric_sum(after, name, **labels, **extra) - metric_sum(before, name, **labels, **extra)

    assert delta("ml_serving_requests_total", endpoint="/predict", status="200") == n
    assert delta("ml_serving_request_duration_seconds_count", endpoint="/predict") == n
    assert delta("ml_serving_predictions_total") == n
    assert delta("ml_serving_inference_rows_total", runtime="onnx") == n
    assert delta("ml_serving_inference_duration_seconds_count", runtime="onnx") == n
    assert delta("ml_serving_feedback_total") == 1
    assert len(logged_by(inline_server, {f"count-{tag}-{i}" for i in range(n)})) == n


def raw_exchange(server: ServingProcess, payload: bytes, pause_after: int | None = None) -> bytes:
    """Send raw bytes (optionally pausing after ``pause_after`` bytes), read until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        if pause_after is None:
            sock.sendall(payload)
        else:
            sock.sendall(payload[:pause_after])
            time.sleep(0.3)
            sock.sendall(payload[pause_after:])
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def request(body: bytes, request_id: str, close: bool = False) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-ID: {request_id}\r\n"
        f"Content-Length: {len(body)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n"
    ).encode() + body


def test_pipelined_split_and_closing_requests_on_one_connection(inline_server: ServingProcess):
    """Keep-alive, pipelining and a body arriving after its head take the direct path or fall back, in order."""
    body = json.dumps({"features": [ROW]}).encode()
    big = json.dumps({"features": [ROW] * (INLINE_MAX_ROWS + 1)}).encode()
    tag = uuid.uuid4().hex[:8]
    ids = [f"pipe-{tag}-{i}" for i in range(4)]
    stream = request(body, ids[0]) + request(big, ids[1]) + request(b"{oops", ids[2]) + request(body, ids[3], True)
    answer = raw_exchange(inline_server, stream)
    heads = [part for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert [h.split(b" ", 1)[0] for h in heads] == [b"200", b"200", b"400", b"200"]
    for head, request_id in zip(heads, ids, strict=True):
        assert f"x-request-id: {request_id}".encode() in head
    assert b"connection: close" in heads[3].lower()

    split_id = f"split-{tag}"
    payload = request(body, split_id, close=True)
    answer = raw_exchange(inline_server, payload, pause_after=payload.index(b"\r\n\r\n") + 4)  # head, then body
    assert answer.startswith(b"HTTP/1.1 200 ") and split_id.encode() in answer
    assert set(logged_by(inline_server, {ids[0], ids[1], ids[3], split_id})) == {ids[0], ids[1], ids[3], split_id}


def test_a_failing_log_disk_in_the_api_process_degrades_health_and_logging_resumes(inline_server: ServingProcess):
    """RLIMIT_FSIZE on the API process: its log writer fails with EFBIG, counts, reports, and resumes."""
    pid = api_pid(inline_server)
    tag = uuid.uuid4().hex[:8]
    assert post(inline_server, {"features": [ROW]}, f"before-{tag}").status_code == 200
    assert logged_by(inline_server, {f"before-{tag}"})
    (log_file,) = inline_server.log_dir.glob(f"date=*/predictions-stable-{pid}.jsonl")
    before = inline_server.metrics()
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (log_file.stat().st_size, resource.RLIM_INFINITY))
    try:
        for i in range(5):
            assert post(inline_server, {"features": [ROW]}, f"lost-{tag}-{i}").status_code == 200
        deadline = time.monotonic() + 10
        while (health := httpx.get(f"{inline_server.url}/health").json())["status"] != "degraded":
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
        assert health["problems"] == ["the prediction log cannot be written (EFBIG); its lines are dropped and counted"]
        dropped = metric_sum(inline_server.metrics(), "ml_serving_log_dropped_total", event="prediction")
        assert dropped - metric_sum(before, "ml_serving_log_dropped_total", event="prediction") >= 5
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert post(inline_server, {"features": [ROW]}, f"after-{tag}").status_code == 200
    assert logged_by(inline_server, {f"after-{tag}"})
    assert not set(logged_by(inline_server, {f"lost-{tag}-{i}" for i in range(5)}, timeout=0.5))
    deadline = time.monotonic() + 10
    while httpx.get(f"{inline_server.url}/health").json()["status"] != "ok":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_smoke_traffic_is_tagged_in_the_log_on_both_paths(inline_server: ServingProcess, main_server: ServingProcess):
    """X-ML-Platform-Traffic: smoke -> "traffic": "smoke" on the log line (absent otherwise), inline or worker."""
    tag = uuid.uuid4().hex[:8]
    for server in (inline_server, main_server):
        smoke, real = f"smoke-{tag}", f"real-{tag}"
        assert post(server, {"features": [ROW]}, smoke, **{"X-ML-Platform-Traffic": "smoke"}).status_code == 200
        assert post(server, {"features": [ROW]}, real).status_code == 200
        assert len(logged_by(server, {smoke, real})) == 2
        lines = {r["request_id"]: r for r in read_jsonl(server.log_dir, "date=*/predictions-*.jsonl")}
        assert lines[smoke]["traffic"] == "smoke"
        assert "traffic" not in lines[real]


def test_sigterm_drains_inline_requests_and_flushes_the_api_process_log(inline_server: ServingProcess):
    """Under single-row load, killpg(SIGTERM): nothing reset, every answered request logged, exit 0. Runs last."""
    drained = sigterm_under_load(inline_server, [ROW])
    assert drained.exit_code == 0, inline_server.tail()
    assert set(drained.outcomes) <= {"200", "refused"}, drained.outcomes
    assert drained.outcomes["200"] > 50
    logged = {r["request_id"] for r in read_jsonl(inline_server.log_dir, "date=*/predictions-*.jsonl")}
    missing = drained.answered - logged
    assert not missing, f"{len(missing)} answered requests missing from the log"

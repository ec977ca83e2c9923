"""Attacks and faults against a real ``python -m serving``: big and slow requests, dying processes, a failing
log disk, SIGTERM under load, and what ``/health`` tells strangers.

One dedicated server (``guarded``) runs with tight limits; the drain test stops it at the end of the module.
The supervision tests start two short-lived servers and kill a process of each.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ml_platform_tests.serving.conftest import ADMIN_TOKEN
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

ROW = [5.1, 3.5, 1.4, 0.2]
JSON_HEADERS = {"Content-Type": "application/json"}
GUARDED_ROWS = 1000
INFLIGHT_BUDGET = 300_000
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5


# --- helpers ----------------------------------------------------------------------------------------------------


def group_pids(pid: int) -> list[int]:
    """Pids of the process group ``pid`` leads (the serving main process starts its own session)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pid and fields[0] != "Z":  # pgrp, not a zombie
                pids.append(int(entry))
    return pids


def listening_pids(port: int) -> list[int]:
    """Processes holding a listening socket on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":
                inodes.add(f"socket:[{parts[9]}]")
    holders = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            links = {os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")}
        except OSError:
            continue
        if links & inodes:
            holders.append(int(entry))
    return holders


def api_server_pid(server: ServingProcess) -> int:
    """An API server process (the one with the lowest pid when there are several)."""
    assert server.process is not None
    return min(p for p in listening_pids(server.port) if p != server.process.pid)


def worker_pids(server: ServingProcess) -> list[int]:
    return [w["pid"] for w in httpx.get(f"{server.url}/health", timeout=10).json()["model"]["workers"]]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def raw_exchange(port: int, payload: bytes, wait: float) -> tuple[bytes, float]:
    """Send ``payload`` on a fresh connection, then read until the server closes it (or ``wait`` seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        if payload:
            sock.sendall(payload)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received, time.monotonic() - started


def parse_response(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def big_body(rows: int) -> bytes:
    """``rows`` rows of the shortest possible JSON: 10 bytes each."""
    return b'{"features":[' + b"[1,1,1,1]," * (rows - 1) + b"[1,1,1,1]]}"


# --- the guarded server -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(mlflow_store: MlflowStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingProcess]:
    """Derived body cap (MAX_BODY_BYTES unset), tight deadlines, a small in-flight budget, one worker."""
    server = ServingProcess(
        "guarded",
        tmp_path_factory.mktemp("guarded"),
        {
            "MLFLOW_TRACKING_URI": mlflow_store.tracking_uri,
            "MODEL_URI": f"models:/{MODEL_NAME}/{mlflow_store.onnx_version}",
            "WORKERS": "1",
            "INLINE_MAX_ROWS": "0",  # the worker answers (and logs) every request; test_inline_path.py: the API process
            "MAX_BATCH_ROWS": str(GUARDED_ROWS),
            "MAX_INFLIGHT_BODY_BYTES": str(INFLIGHT_BUDGET),
            "API_SERVERS": "1",  # the RSS and in-flight budget of one API process (each process has its own)
            "HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "BODY_TIMEOUT": str(BODY_TIMEOUT),
            "ADMIN_API_TOKEN": ADMIN_TOKEN,
        },
    )
    with running(server):
        yield server


def test_a_10mb_body_is_refused_from_content_length_without_growing_the_api(guarded: ServingProcess):
    """1,000,000 rows in 10 MB: 413 at once from the declared length (it used to be parsed: 1.6-2 s, +500 MB)."""
    api = api_server_pid(guarded)
    before = rss_bytes(api)
    started = time.perf_counter()
    response = httpx.post(f"{guarded.url}/predict", content=big_body(1_000_000), headers=JSON_HEADERS, timeout=60)
    elapsed = time.perf_counter() - started

    assert response.status_code == 413, response.text
    assert response.json()["error"] == "request body too large"
    assert "MAX_BODY_BYTES" in response.json()["detail"]
    assert elapsed < 1.0
    assert rss_bytes(api) - before < 20 * 2**20


def test_the_derived_body_cap_fits_max_batch_rows_pretty_printed_records(guarded: ServingProcess):
    """The cap comes from MAX_BATCH_ROWS: the largest valid request, in its wordiest form, still passes."""
    record = dict.fromkeys(["sepal_length", "sepal_width", "petal_length", "petal_width"], -1.2345678901234567e-300)
    body = json.dumps({"records": [record] * GUARDED_ROWS}, indent=4).encode()
    response = httpx.post(f"{guarded.url}/predict", content=body, headers=JSON_HEADERS, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == GUARDED_ROWS
    over = httpx.post(f"{guarded.url}/predict", content=big_body(GUARDED_ROWS + 1), headers=JSON_HEADERS)
    assert over.status_code == 413 and over.json()["error"] == "too many rows"


def test_big_bodies_do_not_stall_small_requests(guarded: ServingProcess):
    """Two clients keep sending the largest body the cap lets through; single-row requests stay fast."""
    body = big_body(20_000)  # under the byte cap, over the row limit: parsed, then refused
    stop = threading.Event()
    big_statuses: Counter[int] = Counter()

    def hammer() -> None:
        with httpx.Client(base_url=guarded.url, timeout=60) as client:
            while not stop.is_set():
                big_statuses[client.post("/predict", content=body, headers=JSON_HEADERS).status_code] += 1

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    latencies = []
    try:
        time.sleep(0.3)
        with httpx.Client(base_url=guarded.url, timeout=60) as client:
            for _ in range(60):
                started = time.perf_counter()
                assert client.post("/predict", json={"features": [ROW]}).status_code == 200
                latencies.append(time.perf_counter() - started)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    # 413 once parsed (too many rows); 503 when both bodies at once would exceed the in-flight budget
    assert set(big_statuses) <= {413, 503} and big_statuses[413] >= 2
    assert statistics.median(latencies) < 0.1, f"p50 {statistics.median(latencies):.3f}s"


def test_a_body_that_never_finishes_gets_408(guarded: ServingProcess):
    head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    raw, elapsed = raw_exchange(guarded.port, head.encode() + b'{"features": [', wait=10)
    status, headers, body = parse_response(raw)
    assert status == 408 and body["error"] == "request timeout" and "BODY_TIMEOUT" in body["detail"]
    assert headers["connection"] == "close" and headers["x-request-id"]
    assert BODY_TIMEOUT <= elapsed < BODY_TIMEOUT + 3


@pytest.mark.parametrize(
    "payload", [b"", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-"], ids=["nothing", "partial-headers"]
)
def test_headers_that_never_finish_get_408(guarded: ServingProcess, payload: bytes):
    raw, elapsed = raw_exchange(guarded.port, payload, wait=10)
    status, headers, body = parse_response(raw)
    assert status == 408 and "HEADER_TIMEOUT" in body["detail"]
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert HEADER_TIMEOUT <= elapsed < HEADER_TIMEOUT + 3


def test_oversized_headers_get_431_and_malformed_http_gets_a_json_400(guarded: ServingProcess):
    huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n"
    status, _, body = parse_response(raw_exchange(guarded.port, huge, wait=10)[0])
    assert status == 431 and body["error"] == "request headers too large"

    status, headers, body = parse_response(raw_exchange(guarded.port, b"NOT HTTP AT ALL\r\n\r\n", wait=10)[0])
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["error"] == "malformed HTTP request" and body["detail"]


def test_bodies_in_flight_are_capped(guarded: ServingProcess):
    """Slow uploads hold at most MAX_INFLIGHT_BODY_BYTES; the next one is told to retry (503), not buffered."""
    declared = 120_000
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    holders = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(2)]
    try:
        for sock in holders:
            sock.sendall(head + b'{"features": [')
        time.sleep(0.3)
        raw, _ = raw_exchange(guarded.port, head + b'{"features": [', wait=5)
        status, headers, body = parse_response(raw)
        assert status == 503 and body["error"] == "server busy" and headers["retry-after"] == "1"
    finally:
        for sock in holders:
            sock.close()
    time.sleep(BODY_TIMEOUT + 0.5)  # the held budget is released when those requests end
    assert httpx.post(f"{guarded.url}/predict", json={"features": [ROW] * 500}).status_code == 200


def test_a_failing_log_disk_degrades_health_and_logging_resumes(guarded: ServingProcess):
    """A real write fault in the worker (RLIMIT_FSIZE: writes past the file's size fail with EFBIG), then none."""
    (worker,) = worker_pids(guarded)
    tag = uuid.uuid4().hex[:8]

    def predict(name: str) -> None:
        response = httpx.post(f"{guarded.url}/predict", json={"features": [ROW]}, headers={"X-Request-ID": name})
        assert response.status_code == 200

    def logged() -> set[str]:
        return {r["request_id"] for r in read_jsonl(guarded.log_dir, "date=*/predictions-*.jsonl")}

    predict(f"before-{tag}")
    deadline = time.monotonic() + 10
    while f"before-{tag}" not in logged():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (log_file,) = guarded.log_dir.glob(f"date=*/predictions-stable-{worker}.jsonl")
    size = log_file.stat().st_size
    before = guarded.metrics()
    resource.prlimit(worker, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
    try:
        for i in range(5):
            predict(f"lost-{tag}-{i}")
        deadline = time.monotonic() + 10
        while (health := httpx.get(f"{guarded.url}/health").json())["status"] != "degraded":
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
        assert health["problems"] == ["the prediction log cannot be written (EFBIG); its lines are dropped and counted"]
        predict(f"still-served-{tag}")  # predictions go on

        def dropped_since_before() -> float:
            after = guarded.metrics()
            return metric_sum(after, "ml_serving_log_dropped_total", event="prediction") - metric_sum(
                before, "ml_serving_log_dropped_total", event="prediction"
            )

        deadline = time.monotonic() + 10  # the five lines may span two writer cycles on a busy machine
        while (dropped := dropped_since_before()) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = guarded.metrics()
        assert metric_sum(after, "ml_serving_log_write_errors_total", event="prediction") > metric_sum(
            before, "ml_serving_log_write_errors_total", event="prediction"
        )
        assert dropped >= 5
        assert metric_sum(after, "ml_serving_log_writer_failing", event="prediction") == 27  # EFBIG
    finally:
        resource.prlimit(worker, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    predict(f"after-{tag}")
    deadline = time.monotonic() + 10
    while f"after-{tag}" not in logged():
        assert time.monotonic() < deadline, "logging did not resume"
        time.sleep(0.1)
    assert httpx.get(f"{guarded.url}/health").json()["status"] == "ok"
    assert not {f"lost-{tag}-{i}" for i in range(5)} & logged()
    for line in log_file.read_text().splitlines():  # a failed write left no partial line behind
        json.loads(line)
    assert metric_sum(guarded.metrics(), "ml_serving_log_writer_failing", event="prediction") == 0


def test_sigterm_to_the_process_group_drains_in_flight_requests(guarded: ServingProcess):
    """What the local deployer does (killpg SIGTERM) under load: nothing in flight is reset, every answered
    request is in the prediction log, exit code 0. Runs last: it stops the module's server."""
    drained = sigterm_under_load(guarded, [ROW] * 400)
    assert drained.exit_code == 0, guarded.tail()
    assert set(drained.outcomes) <= {"200", "refused"}, drained.outcomes
    assert drained.outcomes["200"] > 20
    logged = {r["request_id"] for r in read_jsonl(guarded.log_dir, "date=*/predictions-*.jsonl")}
    missing = drained.answered - logged
    assert not missing, f"{len(missing)} answered requests missing from the log"
    assert guarded.process is not None and group_pids(guarded.process.pid) == []


# --- supervision ------------------------------------------------------------------------------------------------


@pytest.fixture
def doomed(mlflow_store: MlflowStore, tmp_path: Path) -> Iterator[tuple[ServingProcess, ServingProcess, Path]]:
    """Two servers to kill a process of; the first reads a private copy of the store (to break it)."""
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(mlflow_store.root / "mlflow.db", store / "mlflow.db")
    common = {"MODEL_URI": f"models:/{MODEL_NAME}/{mlflow_store.onnx_version}", "WORKERS": "2"}
    first = ServingProcess(
        "doomed-api",
        tmp_path / "api",
        {
            **common,
            "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
            "MODEL_AUTO_REFRESH_SECONDS": "0.5",
            "ADMIN_API_TOKEN": ADMIN_TOKEN,
        },
    )
    second = ServingProcess(
        "doomed-worker", tmp_path / "worker", {**common, "MLFLOW_TRACKING_URI": mlflow_store.tracking_uri}
    )
    with running(first, second):
        yield first, second, store


def wait_exit(server: ServingProcess, timeout: float = 30) -> tuple[int, float]:
    assert server.process is not None
    started = time.monotonic()
    code = server.process.wait(timeout)
    return code, time.monotonic() - started


def test_health_hides_raw_registry_errors_from_strangers_then_any_dead_child_stops_the_server(
    doomed: tuple[ServingProcess, ServingProcess, Path],
):
    api_victim, worker_victim, store = doomed
    # a real registry fault: the store's database is replaced by an empty one (errors quote SQL and paths)
    (store / "mlflow.db").unlink()
    (store / "mlflow.db").write_bytes(b"")
    deadline = time.monotonic() + 30
    while (public := httpx.get(f"{api_victim.url}/health").json())["status"] != "degraded":
        assert time.monotonic() < deadline, public
        time.sleep(0.2)
    admin = httpx.get(f"{api_victim.url}/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    raw = admin["mlflow"]["last_refresh_error"]
    assert raw and ("SELECT" in raw or "sqlite" in raw.lower() or "no such table" in raw)
    shown = json.dumps(public)
    assert "SELECT" not in shown and "no such table" not in shown and str(store) not in shown
    assert "details in the server log" in public["mlflow"]["last_refresh_error"]
    assert public["mlflow"]["tracking_uri"] is None and str(store) in admin["mlflow"]["tracking_uri"]
    assert raw in api_victim.tail(400) or "no such table" in api_victim.tail(400), "the detail is logged"

    # the API server dies: the main process exits non-zero and takes the rest down; the port closes
    os.kill(api_server_pid(api_victim), signal.SIGKILL)
    code, elapsed = wait_exit(api_victim)
    assert code == 3 and elapsed < 15, api_victim.tail()
    assert "the API server" in api_victim.tail() and "SIGKILL" in api_victim.tail()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", api_victim.port), timeout=2)

    # an inference worker dies: same
    victim = worker_pids(worker_victim)[0]
    os.kill(victim, signal.SIGKILL)
    code, elapsed = wait_exit(worker_victim)
    assert code == 3 and elapsed < 15, worker_victim.tail()
    assert f"the inference worker (pid {victim})" in worker_victim.tail()

    deadline = time.monotonic() + 10
    for server in (api_victim, worker_victim):
        assert server.process is not None
        while group_pids(server.process.pid):  # no orphan: every process of both trees is gone
            assert time.monotonic() < deadline, group_pids(server.process.pid)
            time.sleep(0.2)


def test_a_killed_main_process_leaves_no_orphan_holding_the_port(mlflow_store: MlflowStore, tmp_path: Path):
    """SIGKILL to the main process (nothing can drain): the children notice and exit, the port closes."""
    env = {
        "MLFLOW_TRACKING_URI": mlflow_store.tracking_uri,
        "MODEL_URI": f"models:/{MODEL_NAME}/{mlflow_store.onnx_version}",
        "WORKERS": "1",
    }
    server = ServingProcess("orphan", tmp_path, env)
    with running(server):
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        deadline = time.monotonic() + 10
        while group_pids(server.process.pid) or listening_pids(server.port):
            assert time.monotonic() < deadline, (group_pids(server.process.pid), listening_pids(server.port))
            time.sleep(0.2)

"""Hot swap under load, admin reload, MLflow outages, start-up failures and log flushing at shutdown."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ml_platform_tests.conftest import REPO_ROOT, free_port
from ml_platform_tests.serving.conftest import ADMIN_TOKEN
from ml_platform_tests.serving.helpers import (
    MODEL_NAME,
    MlflowStore,
    ServingProcess,
    metric_sum,
    mlflow_server,
    read_jsonl,
    running,
    stop_process,
    wait_http,
)

pytestmark = pytest.mark.slow


def wait_until(condition, timeout: float, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class LoadLoop:
    """Clients posting /predict back to back, recording every outcome."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.outcomes: list[tuple[int, str | None]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/predict", json={"features": [[6.0, 2.9, 4.5, 1.5]]})
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    self.outcomes.append((response.status_code, version))
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> LoadLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def versions_seen(self) -> Counter[str | None]:
        return Counter(version for _, version in list(self.outcomes))


def test_alias_move_hot_swaps_under_load_without_failures(
    hotswap_server: ServingProcess, mlflow_store: MlflowStore, set_alias
):
    old, new = mlflow_store.onnx_version, mlflow_store.other_version
    with LoadLoop(hotswap_server.url) as load:
        wait_until(lambda: len(load.outcomes) >= 50, 30)
        set_alias("hotswap", new)
        wait_until(lambda: load.versions_seen()[new] >= 100, 60)
        seen_after_swap = len(load.outcomes)
        wait_until(lambda: len(load.outcomes) >= seen_after_swap + 50, 30)

    assert load.failures == []
    versions = [version for _, version in load.outcomes]
    first_new = versions.index(new)
    assert set(versions[:first_new]) == {old}
    assert versions[-50:] == [new] * 50, "after the swap every answer comes from the new version"
    health = httpx.get(f"{hotswap_server.url}/health").json()
    assert health["status"] == "ok"
    assert health["model"]["version"] == new
    assert {w["model_version"] for w in health["model"]["workers"]} == {new}
    assert health["mlflow"]["resolved_version"] == new
    samples = hotswap_server.metrics()
    assert metric_sum(samples, "ml_serving_model_info", model_version=new, model_name=MODEL_NAME) == 1
    assert metric_sum(samples, "ml_serving_model_info", model_version=old, model_name=MODEL_NAME) == 0


def test_admin_reload_swaps_immediately(hotswap_server: ServingProcess, mlflow_store: MlflowStore, set_alias):
    current = httpx.get(f"{hotswap_server.url}/health").json()["mlflow"]["resolved_version"]
    target = mlflow_store.onnx_version if current != mlflow_store.onnx_version else mlflow_store.other_version
    set_alias("hotswap", target)

    response = httpx.post(
        f"{hotswap_server.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    )

    assert response.status_code == 200
    assert response.json() == {"changed": True, "previous_version": current, "version": target, "error": None}
    served = wait_until(
        lambda: (
            httpx.post(f"{hotswap_server.url}/predict", json={"features": [[5.0, 3.4, 1.5, 0.2]]}).json()[
                "model_version"
            ]
            == target
        ),
        10,
    )
    assert served


def test_incompatible_or_missing_alias_keeps_serving(hotswap_server: ServingProcess, mlflow_store: MlflowStore):
    """A refresh that fails (alias deleted) leaves the loaded model serving and reports it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_store.tracking_uri)
    serving_version = httpx.get(f"{hotswap_server.url}/health").json()["mlflow"]["resolved_version"]
    client.delete_registered_model_alias(MODEL_NAME, "hotswap")
    try:
        health = wait_until(
            lambda: (h := httpx.get(f"{hotswap_server.url}/health").json())["status"] == "degraded" and h, 20
        )
        assert health["mlflow"]["reachable"] is True  # the store answers; the alias is what is missing
        assert "hotswap" in health["mlflow"]["last_refresh_error"]
        response = httpx.post(f"{hotswap_server.url}/predict", json={"features": [[5.0, 3.4, 1.5, 0.2]]})
        assert response.status_code == 200
        assert response.json()["model_version"] == serving_version
    finally:
        client.set_registered_model_alias(MODEL_NAME, "hotswap", serving_version)
    wait_until(lambda: httpx.get(f"{hotswap_server.url}/health").json()["status"] == "ok", 40)


# --- MLflow behind a real tracking server that goes away --------------------------------------


@pytest.fixture(scope="module")
def tracking_server(mlflow_store: MlflowStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``mlflow server`` over the test store; yields a handle to stop and restart it on the same port."""
    port = free_port()
    output = tmp_path_factory.mktemp("mlflow-server") / "mlflow-server.out"
    handle: dict = {"url": f"http://127.0.0.1:{port}"}

    def start() -> None:
        handle["process"] = mlflow_server(mlflow_store.tracking_uri, mlflow_store.root / "artifacts", port, output)
        wait_http(f"{handle['url']}/health", 180, handle["process"])

    handle["start"] = start
    handle["stop"] = lambda: stop_process(handle["process"])
    start()
    yield handle
    stop_process(handle["process"])


@pytest.fixture(scope="module")
def remote_server(
    tracking_server: dict, mlflow_store: MlflowStore, tmp_path_factory: pytest.TempPathFactory, set_alias
) -> Iterator[ServingProcess]:
    set_alias("remote", mlflow_store.onnx_version)
    server = ServingProcess(
        "remote",
        tmp_path_factory.mktemp("remote"),
        {
            "MLFLOW_TRACKING_URI": tracking_server["url"],
            "MODEL_URI": f"models:/{MODEL_NAME}@remote",
            "MODEL_AUTO_REFRESH_SECONDS": "1",
            "WORKERS": "1",
        },
    )
    with running(server):
        yield server


def test_mlflow_outage_degrades_health_but_predictions_continue(remote_server: ServingProcess, tracking_server: dict):
    health = httpx.get(f"{remote_server.url}/health").json()
    assert health["status"] == "ok"
    assert health["mlflow"]["tracking_uri"] is None  # shown only with the admin token (serving/refresher.py)
    assert health["mlflow"]["reachable"] is True
    assert health["mlflow"]["server_version"]  # GET <uri>/version of the real server

    tracking_server["stop"]()
    try:
        degraded = wait_until(
            lambda: (r := httpx.get(f"{remote_server.url}/health")).json()["status"] == "degraded" and r, 30
        )
        assert degraded.status_code == 200  # still serving: readiness stays up
        body = degraded.json()
        assert body["mlflow"]["reachable"] is False
        assert body["mlflow"]["last_refresh_error"]
        for _ in range(20):
            response = httpx.post(f"{remote_server.url}/predict", json={"features": [[5.1, 3.5, 1.4, 0.2]]})
            assert response.status_code == 200
        assert metric_sum(remote_server.metrics(), "ml_serving_registry_up") == 0
    finally:
        tracking_server["start"]()
    recovered = wait_until(lambda: (h := httpx.get(f"{remote_server.url}/health").json())["status"] == "ok" and h, 60)
    assert recovered["mlflow"]["reachable"] is True
    assert metric_sum(remote_server.metrics(), "ml_serving_registry_up") == 1


def test_shutdown_flushes_the_prediction_log(remote_server: ServingProcess):
    """SIGTERM: rows answered just before shutdown are in the log once the process has exited."""
    tag = uuid.uuid4().hex[:8]
    for i in range(30):
        response = httpx.post(
            f"{remote_server.url}/predict",
            json={"features": [[5.1, 3.5, 1.4, 0.2], [6.0, 3.0, 4.8, 1.8]]},
            headers={"X-Request-ID": f"bye-{tag}-{i}"},
        )
        assert response.status_code == 200

    assert remote_server.stop() == 0

    logged = [r for r in read_jsonl(remote_server.log_dir, "date=*/predictions-*.jsonl") if tag in r["request_id"]]
    assert sorted(r["request_id"] for r in logged) == sorted(f"bye-{tag}-{i}" for i in range(30))
    assert sum(r["rows"] for r in logged) == 60


# --- start-up failures ------------------------------------------------------------------------


def run_serving(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "a model URI is required"),
        (["--model-uri", "runs:/abc/model"], "--model-uri"),
        (["--model-uri", "models:/m@a", "--port", "80"], "between 1024 and 65535"),
        (["--model-uri", "models:/m@a", "--workers", "0"], "--workers"),
        (["--model-uri", "models:/m@a", "--host", "10.0.0.1"], "--host"),
        (["--model-uri", "models:/m@a", "--track", "Canary!"], "--track"),
    ],
)
def test_bad_configuration_exits_with_usage_error(args: list[str], message: str):
    result = run_serving(args, {}, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


def test_environment_variables_configure_the_server(tmp_path: Path):
    result = run_serving([], {"MODEL_URI": "models:/m@a", "WORKERS": "zero"}, timeout=60)
    assert result.returncode == 2
    assert "WORKERS='zero'" in result.stderr


def test_unknown_model_exits_with_an_error(mlflow_store: MlflowStore, tmp_path: Path):
    result = run_serving(
        ["--model-uri", f"models:/{MODEL_NAME}@no-such-alias", "--port", str(free_port())],
        {"MLFLOW_TRACKING_URI": mlflow_store.tracking_uri, "ML_PLATFORM_HOME": str(tmp_path / "home")},
    )
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "no-such-alias" in result.stderr

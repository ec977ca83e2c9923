"""The same pipeline against a real `mlflow server` over HTTP (proxied artifacts)."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from ml_platform_tests.conftest import free_port
from ml_platform_tests.pipeline.helpers import check_outcomes, registry_client, run_training
from ml_platform_tests.serving.helpers import wait_http

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/health", timeout=300, process=process)  # slow to start on a loaded 2-core machine
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_training_job_against_a_real_mlflow_server(platform_home: Path, mlflow_server: str, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with dg.instance_for_test() as instance:
        result = run_training(instance)
    assert result.success, check_outcomes(result)
    client = registry_client()
    version = client.get_model_version_by_alias("iris-random-forest", "challenger")
    assert version.tags["validation_status"] == "passed"
    # nothing MLflow-related was written to the local default store
    assert not (platform_home / "mlflow" / "mlflow.db").exists()
    run = client.get_run(version.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert run.data.metrics["accuracy"] >= 0.85  # on the 30 rows of the evaluation set

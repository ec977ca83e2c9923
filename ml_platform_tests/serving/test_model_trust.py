"""Hostile model versions behind the served alias never run, and never replace the served model.

Each case registers a version in the real sqlite store (as someone with write access to the
registry or the artifact store could), points the ``hotswap`` alias of the running server at it
and asks for a reload: the server refuses it, keeps serving the version it had, and says why in
``/health`` and its log. The pickle case proves its payload is live with a control load through
``mlflow.sklearn.load_model`` in a separate process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ml_platform_tests.conftest import REPO_ROOT
from ml_platform_tests.registry_helpers import (
    register_pickle_payload,
    register_tampered_copy,
    register_ungated_copy,
)
from ml_platform_tests.serving.conftest import ADMIN_TOKEN
from ml_platform_tests.serving.helpers import MODEL_NAME, MlflowStore, ServingProcess

pytestmark = pytest.mark.slow

ROW = {"features": [[5.9, 3.0, 5.1, 1.8]]}


def _client(store: MlflowStore):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)


def _reload(server: ServingProcess) -> httpx.Response:
    return httpx.post(f"{server.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)


def _attack(
    server: ServingProcess, store: MlflowStore, set_alias: Callable[[str, str], None], version: str
) -> tuple[httpx.Response, dict, str]:
    """Point ``hotswap`` at ``version``, reload, let the 1 s refresher retry; restore the alias after."""
    serving = httpx.get(f"{server.url}/health").json()["mlflow"]["resolved_version"]
    set_alias("hotswap", version)
    try:
        reload = _reload(server)
        time.sleep(2.5)  # the auto-refresher (1 s) tries it again in the background
        health = httpx.get(f"{server.url}/health").json()
        answers = {httpx.post(f"{server.url}/predict", json=ROW).json()["model_version"] for _ in range(10)}
        assert answers == {serving}, "the previously loaded version keeps serving"
    finally:
        set_alias("hotswap", serving)
    deadline = time.monotonic() + 40
    while httpx.get(f"{server.url}/health").json()["status"] != "ok":
        assert time.monotonic() < deadline, "health did not recover after the alias was restored"
        time.sleep(0.3)
    return reload, health, serving


def test_pickle_payload_behind_the_alias_is_refused_and_never_runs(
    hotswap_server: ServingProcess, mlflow_store: MlflowStore, set_alias, tmp_path: Path
):
    marker = tmp_path / "pwned-by-serving"
    client = _client(mlflow_store)
    version = register_pickle_payload(client, MODEL_NAME, mlflow_store.onnx_version, tmp_path, marker)

    reload, health, serving = _attack(hotswap_server, mlflow_store, set_alias, version)

    assert not marker.exists(), "the pickle payload ran in the serving process"
    assert reload.status_code in (200, 503)  # a reload that changed nothing because of an error
    assert reload.json()["changed"] is False and reload.json()["version"] == serving
    expected = f"version {version} refused: no model.skops"
    assert expected in (reload.json()["error"] or "")
    assert health["status"] == "degraded" and health["mlflow"]["resolved_version"] == serving
    assert expected in json.dumps(health)
    assert {w["model_version"] for w in health["model"]["workers"]} == {serving}
    assert expected in hotswap_server.tail(400), "the refusal is logged"

    # control: the payload is live — MLflow's own loader, honouring the MLmodel file, runs it
    control = tmp_path / "pwned-by-mlflow"
    files = Path(client.get_model_version(MODEL_NAME, version).source.removeprefix("file://"))
    subprocess.run(
        [sys.executable, "-c", f"import mlflow.sklearn; mlflow.sklearn.load_model({str(files)!r})"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "ML_PWN_MARKER": str(control), "MLFLOW_DISABLE_TELEMETRY": "true"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert control.exists(), "control: loading through mlflow.sklearn executes the payload"
    assert not marker.exists()


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda c, s, r: register_tampered_copy(c, MODEL_NAME, s.onnx_version, r, "model.skops"), "hash mismatch"),
        (
            lambda c, s, r: register_tampered_copy(c, MODEL_NAME, s.onnx_version, r, "extra_files/model.onnx"),
            "hash mismatch (model.onnx)",
        ),
        (lambda c, s, r: register_ungated_copy(c, MODEL_NAME, s.onnx_version, r), "has not passed the model gates"),
    ],
    ids=["skops-tampered", "onnx-tampered", "no-gates"],
)
def test_tampered_or_ungated_version_is_refused(
    hotswap_server: ServingProcess, mlflow_store: MlflowStore, set_alias, tmp_path: Path, tamper, reason: str
):
    version = tamper(_client(mlflow_store), mlflow_store, tmp_path)

    reload, health, serving = _attack(hotswap_server, mlflow_store, set_alias, version)

    assert reload.json()["changed"] is False and reload.json()["version"] == serving
    assert f"version {version} refused" in reload.json()["error"] and reason in reload.json()["error"]
    assert health["mlflow"]["resolved_version"] == serving
    assert f"version {version} refused" in json.dumps(health)


def test_values_beyond_float32_are_a_422_naming_the_column(main_server: ServingProcess):
    """1e300 would be inf in the ONNX graph (float32) but finite in sklearn: the two disagreed."""
    for body, column in (
        ({"features": [[5.1, 3.5, 1e300, 0.2]]}, "petal_length"),
        ({"records": [{"sepal_length": -1e39, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]},
         "sepal_length"),
    ):  # fmt: skip
        response = httpx.post(f"{main_server.url}/predict", json=body)
        assert response.status_code == 422, response.text
        payload = response.json()
        assert payload["error"] and column in json.dumps(payload["detail"])
        assert "float32" in json.dumps(payload["detail"])
    ok = httpx.post(f"{main_server.url}/predict", json={"features": [[5.1, 3.5, 3.4e38, 0.2]]})
    assert ok.status_code == 200

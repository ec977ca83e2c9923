"""Two models behind the one local nginx: real MLflow store, real serving processes, real nginx.

iris (the catalog's default model) and wine each get a registered, gated version in one
MLflow store and a stable serving process; then iris runs a canary while wine stays
stable, iris is promoted and rolled back with the CLI, and iris is stopped. Throughout:
``/models/<name>/...`` answers with that model, the unprefixed paths with the default
model, and neither model's state, lock, ports, feedback key, prediction log or router log
shows the other. The processes are started once and reused across the assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_platform.deployment.deployer import LocalDeployer
from ml_platform.deployment.local import LocalBackend
from ml_platform.deployment.state import DeploymentBusy
from ml_platform_tests.conftest import REPO_ROOT, free_port, reset_mlflow_globals
from ml_platform_tests.deployment.helpers import nginx_binary
from ml_platform_tests.registry_helpers import register_fitted

pytestmark = pytest.mark.slow

TIMEOUT = 240.0


def register(model: str, params: dict[str, Any] | None = None) -> str:
    """Train and register a version of catalog model ``model`` outside Dagster; record its gates as passed."""
    from dataclasses import replace

    import mlflow
    import pandas as pd

    from ml_platform.catalog import get_model
    from ml_platform.ml.mlflow_store import ensure_experiment, experiment_name
    from ml_platform.ml.training import fit_model, split_dataset

    spec = get_model(model).spec
    frame = pd.read_csv(spec.bootstrap_path())
    split = split_dataset(frame, spec)
    if params:
        spec = replace(spec, model=replace(spec.model, params={**spec.model.params, **params}))
    fitted = fit_model(split, spec)
    mlflow.set_experiment(experiment_id=ensure_experiment(experiment_name(spec.name)))
    registered, _ = register_fitted(
        fitted, spec, split, data_version="test", extra_tags={"registered_by": "two-model test"}
    )
    return str(registered.version)


@dataclass
class TwoModels:
    home: Path
    port: int
    iris: LocalBackend
    wine: LocalBackend
    client: Any
    rows: dict[str, dict[str, Any]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def predict(self, path: str, model: str, **headers: str) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json={"records": [self.rows[model]]}, headers=headers, timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DEPLOY_PUBLIC_PORT": str(self.port)}
        return subprocess.run(
            [sys.executable, "-m", "ml_platform.cli", *args], env=env, capture_output=True, text=True, timeout=300
        )


def first_row(model: str) -> dict[str, Any]:
    from ml_platform.catalog import get_model
    from ml_platform.simulate import labelled_rows

    return labelled_rows(get_model(model).spec)[0][0]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoModels]:
    binary = nginx_binary()
    home = tmp_path_factory.mktemp("two-models") / "home"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "ML_PLATFORM_MODEL", "PREDICTION_LOG_DIR"):
            patch.delenv(name, raising=False)
        patch.setenv("ML_PLATFORM_HOME", str(home))
        import mlflow

        from ml_platform.ml.mlflow_store import configure_mlflow

        configure_mlflow()
        iris_v1, iris_v2 = register("iris"), register("iris", {"n_estimators": 30})
        wine_v1 = register("wine")
        assert (iris_v1, iris_v2, wine_v1) == ("1", "2", "1")
        client = mlflow.MlflowClient()
        client.set_registered_model_alias("iris-random-forest", "champion", "1")
        client.set_registered_model_alias("wine-gradient-boosting", "champion", "1")
        port = free_port()
        deployer = LocalDeployer(public_port=port, nginx_binary=binary, stable_refresh_seconds=300)
        iris, wine = deployer.backend_for("iris"), deployer.backend_for("wine")
        rows = {"iris": first_row("iris"), "wine": first_row("wine")}
        platform = TwoModels(home, port, iris, wine, client, rows)
        try:
            # two rollouts at the same time: each under its own lock, only the router lock is shared
            errors: list[BaseException] = []

            def start(backend: LocalBackend) -> None:
                try:
                    with backend.lock(5.0, holder=f"test start of {backend.model}"):
                        backend.ensure_stable("1", TIMEOUT)
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=start, args=(b,)) for b in (iris, wine)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(TIMEOUT + 60)
            assert errors == []
            yield platform
        finally:
            for backend in (iris, wine):
                backend.shutdown()
            reset_mlflow_globals()


def test_each_model_answers_on_its_route_and_the_default_on_unprefixed_paths(two: TwoModels) -> None:
    iris = two.predict("/models/iris/predict", "iris")
    wine = two.predict("/models/wine/predict", "wine")
    default = two.predict("/predict", "iris")
    assert iris.status_code == wine.status_code == default.status_code == 200, (iris.text, wine.text)
    assert iris.json()["model_name"] == "iris-random-forest"
    assert wine.json()["model_name"] == "wine-gradient-boosting"
    assert default.json()["model_name"] == "iris-random-forest"
    # the prefix is stripped: serving sees /health, and each model's process knows its platform name
    assert httpx.get(f"{two.url}/models/wine/health", timeout=10).json()["platform_model"] == "wine"
    assert httpx.get(f"{two.url}/health", timeout=10).json()["platform_model"] == "iris"
    unknown = httpx.post(f"{two.url}/models/churn/predict", json={}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"] == "no such model deployed"
    # a receipt of one model's answer is feedback for that model only
    body = wine.json()
    feedback = {"request_id": body["request_id"], "feedback_token": body["feedback_token"], "labels": [1]}
    ok = httpx.post(f"{two.url}/models/wine/feedback", json=feedback, headers={"X-ML-Track": "stable"}, timeout=10)
    assert ok.status_code == 200, ok.text
    crossed = httpx.post(f"{two.url}/models/iris/feedback", json=feedback, headers={"X-ML-Track": "stable"}, timeout=10)
    assert crossed.status_code != 200
    routed = httpx.get(f"{two.url}/_deployment", timeout=5).json()
    assert routed["default_model"] == "iris" and set(routed["models"]) == {"iris", "wine"}


def test_a_canary_of_one_model_runs_while_the_other_stays_stable_and_neither_sees_the_other(two: TwoModels) -> None:
    wine_before = two.wine.store.load()
    assert wine_before is not None and wine_before.stable is not None
    two.iris.start_canary("2", TIMEOUT)
    two.iris.set_canary_weight(50)
    try:
        versions = {two.predict("/models/iris/predict", "iris").json()["model_version"] for _ in range(40)}
        assert versions == {"1", "2"}
        for _ in range(10):
            answer = two.predict("/models/wine/predict", "wine").json()
            assert (answer["model_name"], answer["model_version"], answer["track"]) == (
                "wine-gradient-boosting",
                "1",
                "stable",
            )
        iris_state, wine_state = two.iris.store.load(), two.wine.store.load()
        assert iris_state is not None and wine_state is not None
        assert iris_state.canary is not None and iris_state.canary_weight == 50
        assert wine_state.canary is None and wine_state.stable == wine_before.stable  # untouched
        # no shared port, folder, state, key or log
        iris_ports = {iris_state.stable.port, iris_state.canary.port}  # type: ignore[union-attr]
        assert wine_state.stable is not None and wine_state.stable.port not in iris_ports
        assert two.iris.folder != two.wine.folder and two.iris.folder.name == "iris"
        assert "wine" not in two.iris.store.path.read_text() and "iris" not in two.wine.store.path.read_text()
        keys = [(b.folder / "feedback-signing.key").read_text() for b in (two.iris, two.wine)]
        assert keys[0] != keys[1]
        iris_log = [json.loads(line) for line in two.iris.access_log.read_text().splitlines()]
        wine_log = [json.loads(line) for line in two.wine.access_log.read_text().splitlines()]
        assert {e["model"] for e in iris_log} == {"iris"} and {e["model"] for e in wine_log} == {"wine"}
        assert any(e["pool"] == "iris__canary" for e in iris_log)
        view = two.iris.router_view()
        assert view is not None
        two.predict("/models/iris/predict", "iris", **{"X-ML-Track": "canary"})
        attempts, deadline = view.read_new(), time.monotonic() + 5.0
        while not attempts and time.monotonic() < deadline:  # nginx logs after the answer is sent
            time.sleep(0.05)
            attempts = view.read_new()
        assert attempts, "the router view of iris's canary saw no attempt"
        for model in ("iris", "wine"):
            folder = two.home / "logs" / "predictions" / model
            lines = [json.loads(x) for p in folder.rglob("*.jsonl") for x in p.read_text().splitlines()]
            assert lines and {line.get("model") for line in lines} == {model}
        # each model's lock is its own: wine's can be taken while iris's is held
        with two.iris.lock(0.0, holder="test: iris rollout"):
            with pytest.raises(DeploymentBusy, match="iris"), two.iris.lock(0.0):
                pass
            with two.wine.lock(0.0, holder="test: wine rollout"):
                assert two.wine.lock_holder() is not None
    finally:
        two.iris.retire_canary()
    assert two.iris.store.load().canary is None  # type: ignore[union-attr]
    assert httpx.get(f"{two.url}/models/iris/_deployment", timeout=5).json()["canary_weight"] == 0


def test_a_rollback_of_one_model_leaves_the_other_untouched(two: TwoModels) -> None:
    from ml_platform.deployment.registry_ops import move_champion

    move_champion(two.client, "iris-random-forest", "2")  # promote v2 (previous_champion = 1)
    two.iris.serve_on_stable("2", TIMEOUT)
    assert two.predict("/models/iris/predict", "iris").json()["model_version"] == "2"
    wine_before = two.wine.store.path.read_text()
    wine_pid = two.wine.store.load().stable.pid  # type: ignore[union-attr]

    rolled = two.cli("rollback", "--model", "iris", "--wait", "30")
    assert rolled.returncode == 0, rolled.stderr
    assert two.predict("/models/iris/predict", "iris").json()["model_version"] == "1"
    assert two.wine.store.path.read_text() == wine_before
    assert two.wine.store.load().stable.pid == wine_pid  # type: ignore[union-attr]
    champion = two.client.get_model_version_by_alias("wine-gradient-boosting", "champion")
    assert str(champion.version) == "1"

    shown = two.cli("status")  # every model
    assert shown.returncode == 0, shown.stderr
    assert "== iris" in shown.stdout and "== wine" in shown.stdout
    assert f"http://127.0.0.1:{two.port}/models/wine" in shown.stdout


def test_stopping_one_model_keeps_the_other_routed(two: TwoModels) -> None:
    stopped = two.cli("stop", "--model", "iris")
    assert stopped.returncode == 0, stopped.stderr
    assert two.iris.store.load() is None
    answer = two.predict("/models/wine/predict", "wine")
    assert answer.status_code == 200 and answer.json()["model_name"] == "wine-gradient-boosting"
    gone = httpx.post(f"{two.url}/predict", json={}, timeout=10)  # the default model is not deployed any more
    assert gone.status_code == 404 and "default model" in gone.json()["error"]
    assert httpx.post(f"{two.url}/models/iris/predict", json={}, timeout=10).status_code == 404

"""Session fixtures: one real MLflow store with three iris versions and a wine one, and real serving processes.

Serving processes are shared: ``main`` (ONNX, two workers, admin token) serves
most tests; ``fallback`` serves the sklearn-only version (no admin token);
``hotswap`` follows an alias with a one-second refresh; ``wine`` serves the
wine model from the same platform home as ``main`` (one worker). ``main`` and
``wine`` get neither ``MODEL_NAME`` nor ``PREDICTION_LOG_DIR``: their platform
model names come from the catalog and they log to
``<home>/logs/predictions/<model>``, as the deployer's defaults do. They start
concurrently once per session, and are stopped with SIGTERM at the end.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ml_platform_tests.conftest import reset_mlflow_globals
from ml_platform_tests.registry_helpers import hash_tags, pass_gates, register_fitted
from ml_platform_tests.serving.helpers import MODEL_NAME, WINE_MODEL_NAME, MlflowStore, ServingProcess, running

ADMIN_TOKEN = "test-admin-token-3f1c"
# main and fallback are one "deployment" sharing a receipt key; hotswap generates its own at start
FEEDBACK_KEY = "test-feedback-signing-key-5d0b9e2c41a7f388"
MAIN_MAX_BATCH_ROWS = 2000
MAIN_MAX_BODY_BYTES = 1_000_000


def _register_without_onnx(version: str, root: Path) -> str:
    """Register a copy of ``version``'s model files minus the ONNX graph: the sklearn fallback path."""
    import mlflow

    client = mlflow.MlflowClient()
    source = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/{version}"))
    target = root / f"sklearn-only-{version}"
    shutil.copytree(source, target)
    (target / "extra_files" / "model.onnx").unlink()
    tags = {"onnx": "unavailable: test fixture", **hash_tags(client.get_model_version(MODEL_NAME, version))}
    tags.pop("sha256.model_onnx", None)
    created = client.create_model_version(MODEL_NAME, target.as_uri(), tags=tags)
    pass_gates(client, MODEL_NAME, str(created.version))
    return str(created.version)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> MlflowStore:
    """Iris forests registered in a sqlite store: v1 ONNX, v2 another ONNX forest, v3 = v1 without ONNX; wine v1."""
    import mlflow
    import pandas as pd

    from ml_platform.ml.training import fit_model, split_dataset
    from ml_platform.spec import load_spec

    root = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    try:
        experiment_id = mlflow.create_experiment("serving-tests", artifact_location=(root / "artifacts").as_uri())
        spec = load_spec("iris")
        frame = pd.read_csv(spec.bootstrap_path())
        split = split_dataset(frame, spec)
        model = fit_model(split, spec)
        small = {"n_estimators": 7, "max_depth": 2, "random_state": 3}
        other = fit_model(split, replace(spec, model=replace(spec.model, params=small)))
        versions = []
        for fitted in (model, other):
            registered, export = register_fitted(
                fitted, spec, split, data_version="test-data", experiment_id=experiment_id
            )
            assert export.verified, export.reason
            versions.append(registered.version)
        versions.append(_register_without_onnx(versions[0], root))
        wine = load_spec("wine")
        wine_split = split_dataset(pd.read_csv(wine.bootstrap_path()), wine)
        wine_model = fit_model(wine_split, wine)
        registered, _ = register_fitted(
            wine_model, wine, wine_split, data_version="test-data", experiment_id=experiment_id
        )
        versions.append(registered.version)
    finally:
        reset_mlflow_globals()  # everything below names this store explicitly; other tests must not see it
    return MlflowStore(root, tracking_uri, *versions)


def _set_alias(store: MlflowStore, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=store.tracking_uri).set_registered_model_alias(MODEL_NAME, alias, version)


@pytest.fixture(scope="session")
def set_alias(mlflow_store: MlflowStore):  # type: ignore[no-untyped-def]
    """Move an alias of the test model (what a promotion does)."""
    return lambda alias, version: _set_alias(mlflow_store, alias, version)


@pytest.fixture(scope="session")
def fleet(mlflow_store: MlflowStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServingProcess]]:
    """The shared serving processes, started concurrently."""
    _set_alias(mlflow_store, "hotswap", mlflow_store.onnx_version)
    base = tmp_path_factory.mktemp("serving")
    common = {"MLFLOW_TRACKING_URI": mlflow_store.tracking_uri}
    servers = {
        "main": ServingProcess(
            "main",
            base / "main",
            {
                **common,
                "MODEL_URI": f"models:/{MODEL_NAME}/{mlflow_store.onnx_version}",
                "WORKERS": "2",
                "INLINE_MAX_ROWS": "0",  # every request through the workers (test_inline_path.py: the API process)
                "ADMIN_API_TOKEN": ADMIN_TOKEN,
                "FEEDBACK_SIGNING_KEY": FEEDBACK_KEY,
                "MAX_BATCH_ROWS": str(MAIN_MAX_BATCH_ROWS),
                "MAX_BODY_BYTES": str(MAIN_MAX_BODY_BYTES),
            },
            default_log_dir=True,
        ),
        "wine": ServingProcess(
            "wine",
            base / "wine",
            {**common, "MODEL_URI": f"models:/{WINE_MODEL_NAME}/{mlflow_store.wine_version}", "WORKERS": "1"},
            home=base / "main" / "home",
            model="wine",
            default_log_dir=True,
        ),
        "fallback": ServingProcess(
            "fallback",
            base / "fallback",
            {
                **common,
                "MODEL_URI": f"models:/{MODEL_NAME}/{mlflow_store.sklearn_version}",
                "TRACK": "canary",
                "WORKERS": "1",
                "FEEDBACK_SIGNING_KEY": FEEDBACK_KEY,
            },
        ),
        "hotswap": ServingProcess(
            "hotswap",
            base / "hotswap",
            {
                **common,
                "MODEL_URI": f"models:/{MODEL_NAME}@hotswap",
                "WORKERS": "2",
                "MODEL_AUTO_REFRESH_SECONDS": "1",
                "ADMIN_API_TOKEN": ADMIN_TOKEN,
            },
        ),
    }
    with running(*servers.values()):
        yield servers


@pytest.fixture(scope="session")
def main_server(fleet: dict[str, ServingProcess]) -> ServingProcess:
    return fleet["main"]


@pytest.fixture(scope="session")
def fallback_server(fleet: dict[str, ServingProcess]) -> ServingProcess:
    return fleet["fallback"]


@pytest.fixture(scope="session")
def wine_server(fleet: dict[str, ServingProcess]) -> ServingProcess:
    """The wine model, served from ``main``'s platform home."""
    return fleet["wine"]


@pytest.fixture(scope="session")
def hotswap_server(fleet: dict[str, ServingProcess]) -> ServingProcess:
    return fleet["hotswap"]

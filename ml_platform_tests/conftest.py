"""Shared fixtures: every test gets an isolated platform home and real local backends."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Quiet third-party telemetry for the whole test session (also inherited by subprocesses).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

_PLATFORM_VARIABLES = (
    "ML_PLATFORM_HOME",
    "ML_PLATFORM_DATASET",
    "ML_PLATFORM_SPEC",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_ARTIFACT_LOCATION",
    "MODEL_MIN_ACCURACY",
    "REFERENCE_DATASET_URI",
    "REFERENCE_DATASET_MAX_ROWS",
    "DAGSTER_HOME",
)


@pytest.fixture
def platform_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty platform home; the MLflow store is the sqlite default inside it."""
    for name in _PLATFORM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("ML_PLATFORM_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    yield home
    reset_mlflow_globals()


def reset_mlflow_globals() -> None:
    """Forget the tracking/registry URIs a test set in this process.

    mlflow.set_tracking_uri / set_registry_uri export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI
    into os.environ (and so into every child process); a later test must not inherit them.
    """
    import sys

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    if "mlflow" in sys.modules:
        import mlflow
        import mlflow.tracking._model_registry.utils as registry_utils
        import mlflow.tracking._tracking_service.utils as tracking_utils

        if mlflow.active_run() is not None:
            mlflow.end_run()
        registry_utils._registry_uri = None
        tracking_utils._tracking_uri = None


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

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
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI into os.environ; don't leak it.
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

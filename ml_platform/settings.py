"""Where the platform keeps its state, resolved from the environment.

Everything written locally lives under one folder, the *platform home*
(``ML_PLATFORM_HOME``, default ``.ml_platform/`` in the current directory),
so a user can inspect, back up or delete it in one place. Standard variables
(``MLFLOW_TRACKING_URI``, ``DAGSTER_HOME``, ...) override the embedded
defaults. This module imports nothing heavy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME_DIRNAME = ".ml_platform"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@dataclass(frozen=True)
class PlatformPaths:
    """The folder layout under the platform home."""

    home: Path

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_db(self) -> Path:
        return self.mlflow_dir / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"

    def data_dir(self, dataset: str) -> Path:
        return self.home / "data" / dataset

    def incoming_dir(self, dataset: str) -> Path:
        return self.data_dir(dataset) / "incoming"

    def accepted_dir(self, dataset: str) -> Path:
        return self.data_dir(dataset) / "accepted"

    def quarantine_dir(self, dataset: str) -> Path:
        return self.data_dir(dataset) / "quarantine"

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def prediction_log_root(self) -> Path:
        return self.home / "logs" / "predictions"

    def prediction_log_dir(self, model: str) -> Path:
        """One model's prediction and feedback logs."""
        return self.prediction_log_root / model

    @property
    def deployments_root(self) -> Path:
        return self.home / "deployments"

    def deployment_dir(self, model: str) -> Path:
        """One model's local deployment: state, lock, router, processes, feedback key."""
        return self.deployments_root / model

    def model_snapshots_dir(self, model: str) -> Path:
        return self.snapshots_dir / model

    def model_reports_dir(self, model: str) -> Path:
        return self.reports_dir / model


def platform_home() -> Path:
    """The platform home as an absolute path (not created)."""
    configured = _env("ML_PLATFORM_HOME")
    home = Path(configured) if configured else Path.cwd() / DEFAULT_HOME_DIRNAME
    return home.expanduser().resolve()


def platform_paths() -> PlatformPaths:
    return PlatformPaths(platform_home())


def mlflow_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a sqlite store in the platform home."""
    configured = _env("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return f"sqlite:///{platform_paths().mlflow_db}"


def mlflow_registry_uri() -> str:
    return _env("MLFLOW_REGISTRY_URI") or mlflow_tracking_uri()


def mlflow_artifact_location() -> str | None:
    """Artifact root for new experiments.

    ``MLFLOW_ARTIFACT_LOCATION`` if set; for a local (sqlite or file) store the
    platform home; for a tracking server None, so the server's own artifact
    root applies. (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so the
    decision looks at the URI's scheme, not at whether the variable is set.)
    """
    configured = _env("MLFLOW_ARTIFACT_LOCATION")
    if configured:
        return configured
    if mlflow_tracking_uri().startswith(("http://", "https://", "databricks")):
        return None
    return platform_paths().mlflow_artifacts.as_uri()


def ensure_local_dirs() -> PlatformPaths:
    """Create the platform home folders that local backends write into."""
    paths = platform_paths()
    for folder in (paths.home, paths.dagster_home, paths.mlflow_dir, paths.snapshots_dir, paths.reports_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return paths

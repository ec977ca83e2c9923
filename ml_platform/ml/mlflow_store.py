"""The MLflow store: tracking URI set-up, experiments, and a registry client (plain Python).

``ml_platform.defs.resources`` wraps :class:`MlflowStore` as the ``mlflow_registry`` resource
and :class:`LazyMlflowTracking` in the ``mlflow`` (dagster-mlflow) resource. mlflow is imported
inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml_platform import settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_EXPERIMENT_PREFIX = "ml_platform"


def experiment_name(model: str) -> str:
    """The MLflow experiment a model's training runs go to (``MLFLOW_EXPERIMENT_NAME`` overrides)."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"{DEFAULT_EXPERIMENT_PREFIX}-{model}"


def configure_mlflow(tracking_uri: str | None = None) -> str:
    """Point the mlflow client at the platform's tracking URI and quiet its telemetry."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = tracking_uri or settings.mlflow_tracking_uri()
    if uri.startswith("sqlite:"):
        settings.ensure_local_dirs()
    mlflow.set_tracking_uri(uri)
    # Only an explicitly configured registry is set globally: mlflow.set_registry_uri also exports
    # MLFLOW_REGISTRY_URI, which would pin every later store (and child process) to this one.
    explicit_registry = os.environ.get("MLFLOW_REGISTRY_URI", "").strip() if tracking_uri is None else ""
    if explicit_registry:
        mlflow.set_registry_uri(explicit_registry)
    else:
        import mlflow.tracking._model_registry.utils as registry_utils

        registry_utils._registry_uri = None  # fall back to the tracking URI
    return uri


def ensure_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Create the experiment (artifacts under the platform home for local stores); return its id."""
    configure_mlflow(tracking_uri)
    import mlflow

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    artifact_location = settings.mlflow_artifact_location() if tracking_uri is None else None
    try:
        return str(mlflow.create_experiment(name, artifact_location=artifact_location))
    except mlflow.exceptions.MlflowException:
        # Another process created it first.
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


@dataclass(frozen=True)
class MlflowStore:
    """A configured MLflow store for registry reads and writes (aliases, tags) and UI links."""

    tracking_uri: str | None = None

    def resolved_uri(self) -> str:
        return self.tracking_uri or settings.mlflow_tracking_uri()

    def client(self) -> MlflowClient:
        """An ``MlflowClient`` bound to the configured store (mlflow imported lazily)."""
        uri = configure_mlflow(self.tracking_uri)
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=uri, registry_uri=uri if self.tracking_uri else settings.mlflow_registry_uri())

    def ui_link(self, run_id: str | None = None, model: str | None = None, version: str | None = None) -> str | None:
        """A link into the MLflow UI when the store is served over HTTP."""
        uri = self.resolved_uri()
        if not uri.startswith(("http://", "https://")):
            return None
        base = uri.rstrip("/")
        if model and version:
            return f"{base}/#/models/{model}/versions/{version}"
        return f"{base}/#/runs/{run_id}" if run_id else base


class LazyMlflowTracking:
    """Builds a run-tracking object (dagster-mlflow's ``MlFlow``) on first attribute access."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._resource: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._resource is None:
            self._resource = self._factory()
        return getattr(self._resource, name)

    def close_if_open(self) -> None:
        """End the tracked MLflow run if a step left it open (as FAILED)."""
        if self._resource is None:
            return
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self._resource.mlflow_run_id:
            mlflow.end_run(status="FAILED")

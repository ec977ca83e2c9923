"""MLflow resources: dagster-mlflow run tracking and a registry client.

``mlflow_tracking`` wraps dagster-mlflow's resource (one MLflow run per
Dagster run, tagged ``dagster_run_id``) but imports it lazily: dagster_mlflow
imports mlflow at module level, which would cost seconds on every load of the
code location. Before handing over, it creates the experiment with its
artifact root under the platform home when the store is the local default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from ml_platform import settings
from ml_platform.spec import load_spec

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_EXPERIMENT_PREFIX = "ml_platform"


def experiment_name(dataset: str) -> str:
    """The MLflow experiment a dataset's training runs go to."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"{DEFAULT_EXPERIMENT_PREFIX}-{dataset}"


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


@dg.resource(
    config_schema={
        "experiment_name": dg.Field(dg.StringSource, is_required=False, description="MLflow experiment"),
        "mlflow_tracking_uri": dg.Field(dg.Noneable(dg.StringSource), default_value=None, is_required=False),
        "extra_tags": dg.Field(dg.Permissive(), is_required=False, description="Extra tags on the MLflow run"),
    },
    description="dagster-mlflow tracking (one MLflow run per Dagster run), imported lazily.",
)
def mlflow_tracking(init_context: dg.InitResourceContext) -> Iterator[Any]:
    """One MLflow run per Dagster run through dagster-mlflow's ``MlFlow`` resource.

    The MLflow run starts on first use, so runs whose gates stop them before
    training leave no empty MLflow run behind; a run still open when the
    Dagster run ends (the step failed) is closed as FAILED.
    """
    config = dict(init_context.resource_config or {})

    def start() -> Any:
        from dagster_mlflow.resources import MlFlow

        config.setdefault("experiment_name", experiment_name(load_spec().name))
        explicit_uri = config.get("mlflow_tracking_uri")
        config["mlflow_tracking_uri"] = explicit_uri or settings.mlflow_tracking_uri()
        config.setdefault("env", {})
        ensure_experiment(config["experiment_name"], explicit_uri)
        # MlFlow reads only these attributes of its init context.
        context_view = SimpleNamespace(
            log=init_context.log,
            dagster_run=init_context.dagster_run,
            run_id=init_context.run_id,
            resource_config=config,
        )
        return MlFlow(context_view)

    tracking = LazyMlflowTracking(start)
    try:
        yield tracking
    finally:
        tracking.close_if_open()


class LazyMlflowTracking:
    """Builds the dagster-mlflow resource on first attribute access."""

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
        """End this Dagster run's MLflow run if a step left it open."""
        if self._resource is None:
            return
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self._resource.mlflow_run_id:
            mlflow.end_run(status="FAILED")


class MlflowRegistry(dg.ConfigurableResource):
    """A configured MLflow client for registry reads and writes (aliases, tags)."""

    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI or the platform-home sqlite store"
    )

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

"""The model-independent resources of the code location, thin Dagster wrappers over plain classes.

Every resource serves every model: methods take the model name (e.g.
``landing_zone.for_model("wine")``); no resource holds a per-model field. Settings read from the
environment are declared with ``dg.EnvVar`` where they have no default, or resolved when used
(``ML_PLATFORM_HOME``, ``MLFLOW_TRACKING_URI``, ``PREDICTION_LOG_ROOT``, ``PROMETHEUS_PUSHGATEWAY_URL``),
so one deployment points them elsewhere by configuration. Importing this module loads no heavy library.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from ml_platform import settings
from ml_platform.deployment import deployer as deployers
from ml_platform.deployment.deployer import KubernetesDeployer, LocalDeployer
from ml_platform.deployment.metric_source import MetricSource
from ml_platform.ml.mlflow_store import LazyMlflowTracking, MlflowStore, ensure_experiment, experiment_name
from ml_platform.monitoring.backends import DriftPusher, PredictionLogSource
from ml_platform.monitoring.prometheus import PUSH_JOB
from ml_platform.validation.landing_zone import DEFAULT_SETTLE_SECONDS, LandingZone, ModelLandingZone

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ml_platform.monitoring.logs import DayLog
    from ml_platform.spec import DatasetSpec

UNPARTITIONED = "__unpartitioned__"


class LandingZoneResource(dg.ConfigurableResource):
    """The landing folders of every model under the platform home (``data/<model>/incoming|accepted|quarantine``)."""

    home: str | None = Field(default=None, description="Platform home; default ML_PLATFORM_HOME or .ml_platform/")
    settle_seconds: float = Field(
        default=DEFAULT_SETTLE_SECONDS,
        description="Ignore incoming files modified more recently than this (still being written)",
    )

    def plain(self) -> LandingZone:
        return LandingZone(Path(self.home) if self.home else None, self.settle_seconds)

    def for_model(self, model: str) -> ModelLandingZone:
        """One model's landing zone (the plain object the assets and the sensor use)."""
        return self.plain().for_model(model)


class MlflowRegistryResource(dg.ConfigurableResource):
    """A configured MLflow store for registry reads and writes (aliases, tags) of every model."""

    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI or the platform-home sqlite store"
    )

    def plain(self) -> MlflowStore:
        return MlflowStore(self.tracking_uri)

    def resolved_uri(self) -> str:
        return self.plain().resolved_uri()

    def client(self) -> MlflowClient:
        """An ``MlflowClient`` bound to the configured store (mlflow imported lazily)."""
        return self.plain().client()

    def ui_link(self, run_id: str | None = None, model: str | None = None, version: str | None = None) -> str | None:
        """A link into the MLflow UI when the store is served over HTTP."""
        return self.plain().ui_link(run_id=run_id, model=model, version=version)


@dg.resource(
    config_schema={
        "experiment_name": dg.Field(dg.StringSource, is_required=False, description="MLflow experiment"),
        "mlflow_tracking_uri": dg.Field(dg.Noneable(dg.StringSource), default_value=None, is_required=False),
        "extra_tags": dg.Field(dg.Permissive(), is_required=False, description="Extra tags on the MLflow run"),
    },
    description="dagster-mlflow tracking (one MLflow run per Dagster run, experiment per model), imported lazily.",
)
def mlflow_tracking(init_context: dg.InitResourceContext) -> Iterator[Any]:
    """One MLflow run per Dagster run through dagster-mlflow's ``MlFlow`` resource.

    The experiment is the run's model's (``ml_platform-<model>``, from the run tag
    ``ml_platform/model``). The MLflow run starts on first use, so runs whose gates stop them
    before training leave no empty MLflow run behind; a run still open when the Dagster run ends
    (the step failed) is closed as FAILED.
    """
    config = dict(init_context.resource_config or {})

    def start() -> Any:
        from dagster_mlflow.resources import MlFlow

        from ml_platform.catalog import get_model

        run = init_context.dagster_run
        model = (run.tags.get("ml_platform/model") if run is not None else None) or get_model().name
        config.setdefault("experiment_name", experiment_name(model))
        explicit_uri = config.get("mlflow_tracking_uri")
        config["mlflow_tracking_uri"] = explicit_uri or settings.mlflow_tracking_uri()
        config.setdefault("env", {})
        ensure_experiment(config["experiment_name"], explicit_uri)
        # MlFlow reads only these attributes of its init context.
        context_view = SimpleNamespace(
            log=init_context.log, dagster_run=run, run_id=init_context.run_id, resource_config=config
        )
        return MlFlow(context_view)

    tracking = LazyMlflowTracking(start)
    try:
        yield tracking
    finally:
        tracking.close_if_open()


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@=-]", "_", part)


class JsonIOManager(dg.ConfigurableIOManager):
    """Stores each output as ``<base_dir>/<model>/<asset>/<partition>.json``: descriptors, never pickle.

    Assets hand each other descriptors (paths, hashes, model-version coordinates), not data; the
    data lives in the platform home as CSV/Parquet and in MLflow.
    """

    base_dir: str | None = Field(default=None, description="Default: <platform home>/dagster/io")

    def _root(self) -> Path:
        return Path(self.base_dir) if self.base_dir else settings.platform_paths().dagster_home / "io"

    def _asset_dir(self, context: dg.OutputContext | dg.InputContext) -> Path:
        parts = [_safe(p) for p in context.asset_key.path] if context.has_asset_key else [_safe(context.name or "out")]
        return self._root().joinpath(*parts)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        folder = self._asset_dir(context)
        partitioned = context.has_asset_partitions
        self._write(folder / f"{_safe(context.asset_partition_key if partitioned else UNPARTITIONED)}.json", obj)
        if context.has_asset_key:
            # Steps of the same run (e.g. a check after a sweep) find the value by run id.
            self._write(folder / "runs" / f"{_safe(context.run_id)}.json", obj)

    @staticmethod
    def _write(path: Path, obj: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=str))
        tmp.replace(path)

    def load_input(self, context: dg.InputContext) -> Any:
        folder = self._asset_dir(context)
        candidates = []
        upstream = context.upstream_output
        if upstream is not None:
            with contextlib.suppress(dg.DagsterInvariantViolationError):
                candidates.append(folder / "runs" / f"{_safe(upstream.run_id)}.json")
        if context.has_asset_partitions and len(context.asset_partition_keys) == 1:
            candidates.append(folder / f"{_safe(context.asset_partition_key)}.json")
        candidates.append(folder / f"{UNPARTITIONED}.json")
        for path in candidates:
            if path.exists():
                return json.loads(path.read_text())
        raise FileNotFoundError(
            f"no stored value for {context.asset_key.to_user_string()} under {folder}; materialize it first"
        )


class LocalDeployerResource(dg.ConfigurableResource, LocalDeployer):
    """Deploys each model's versions to its stable and canary serving processes behind the one local nginx.

    The fields are those of :class:`~ml_platform.deployment.deployer.LocalDeployer`;
    ``backend_for(model)`` returns the backend that deploys one model (``home/deployments/<model>``).
    """

    def plain(self) -> LocalDeployer:
        return LocalDeployer(**{name: getattr(self, name) for name in LocalDeployer.model_fields})


class KubernetesDeployerResource(dg.ConfigurableResource, KubernetesDeployer):
    """Deploys each model's versions by patching its objects of ``deploy/k8s`` (per-model overlay).

    The fields are those of :class:`~ml_platform.deployment.deployer.KubernetesDeployer`.
    """

    def plain(self) -> KubernetesDeployer:
        return KubernetesDeployer(**{name: getattr(self, name) for name in KubernetesDeployer.model_fields})


class MetricSourceResource(dg.ConfigurableResource, MetricSource):
    """Where the canary analysis reads serving metrics: ``scrape`` (default) or ``prometheus``."""

    def plain(self) -> MetricSource:
        return MetricSource(**{name: getattr(self, name) for name in MetricSource.model_fields})


class PredictionLogResource(dg.ConfigurableResource):
    """The serving prediction/feedback logs of every model (``<root>/<model>/date=YYYY-MM-DD/``)."""

    log_dir: str | None = Field(
        default=None,
        description="Root of every model's log folder; default PREDICTION_LOG_ROOT, else <home>/logs/predictions",
    )

    def plain(self) -> PredictionLogSource:
        return PredictionLogSource(self.log_dir)

    def root(self, model: str) -> str:
        return self.plain().root(model)

    def read_day(self, model: str, day: str, spec: DatasetSpec) -> DayLog:
        """One model's predictions and feedback of one UTC day."""
        return self.plain().read_day(model, day, spec)


class DriftMetricsResource(dg.ConfigurableResource):
    """Pushes each model's drift gauges to a Prometheus Pushgateway; does nothing when no URL is configured."""

    url: str | None = Field(
        default=None, description="Pushgateway URL; default PROMETHEUS_PUSHGATEWAY_URL (unset: skip)"
    )
    job: str = Field(default=PUSH_JOB, description="The `job` label of the pushed group")
    timeout_seconds: float = Field(default=10.0, description="HTTP timeout of one push")

    def plain(self) -> DriftPusher:
        return DriftPusher(self.url, self.job, self.timeout_seconds)

    def push(self, model: str, report: dict[str, Any]) -> str:
        """Push one model's report; what happened, for the asset's metadata (never raises)."""
        return self.plain().push(model, report)


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def deployer_from_env() -> LocalDeployerResource | KubernetesDeployerResource:
    """The resource of the backend ``DEPLOYER_BACKEND`` names, with ``DEPLOY_PUBLIC_PORT``,
    ``DEPLOY_NAMESPACE``, ``DEPLOY_ROUTING``, ``DEPLOY_PUBLIC_URL``, ``KUBE_API_URL``
    (see :func:`ml_platform.deployment.deployer.deployer_from_env`)."""
    plain = deployers.deployer_from_env()
    if isinstance(plain, KubernetesDeployer):
        return KubernetesDeployerResource(**plain.model_dump())
    return LocalDeployerResource(**plain.model_dump())


def metric_source_from_env() -> MetricSourceResource:
    """``METRIC_SOURCE`` (scrape | prometheus), ``PROMETHEUS_URL`` and ``PROMETHEUS_SELECTOR``."""
    return MetricSourceResource(
        backend=_env("METRIC_SOURCE", "scrape"),  # type: ignore[arg-type]
        prometheus_url=_env("PROMETHEUS_URL", "http://127.0.0.1:9090"),
        prometheus_selector=os.environ.get("PROMETHEUS_SELECTOR", ""),
    )


def platform_resources() -> dict[str, Any]:
    """Every resource the models' assets, checks and sensors use, configured from the environment."""
    return {
        "landing_zone": LandingZoneResource(),
        "mlflow_registry": MlflowRegistryResource(),
        "mlflow": mlflow_tracking,
        "json_io_manager": JsonIOManager(),
        "deployer": deployer_from_env(),
        "metric_source": metric_source_from_env(),
        "prediction_log": PredictionLogResource(),
        "drift_metrics": DriftMetricsResource(),
    }


@dg.definitions
def resources() -> dg.Definitions:
    """The code location's resources, shared by every model."""
    return dg.Definitions(resources=platform_resources())

"""What the deployment part adds to the code location (``ml_platform.definitions.build_defs`` merges it).

Resources are configured from the environment: ``DEPLOYER_BACKEND`` (local |
kubernetes), ``DEPLOY_PUBLIC_PORT``, ... (see :class:`~ml_platform.deployment.deployer.Deployer`),
``METRIC_SOURCE`` (scrape | prometheus) and ``PROMETHEUS_URL``.
"""

import os
from typing import Any

from ml_platform.assets.deployment import canary_deployment
from ml_platform.deployment.deployer import Deployer
from ml_platform.deployment.jobs import canary_deployment_job
from ml_platform.deployment.metric_source import MetricSource
from ml_platform.sensors.model_version import model_version_sensor


def metric_source_from_env() -> MetricSource:
    """``METRIC_SOURCE`` (scrape | prometheus) and ``PROMETHEUS_URL``."""
    return MetricSource(
        backend=os.environ.get("METRIC_SOURCE", "scrape").strip() or "scrape",  # type: ignore[arg-type]
        prometheus_url=os.environ.get("PROMETHEUS_URL", "http://127.0.0.1:9090"),
        prometheus_selector=os.environ.get("PROMETHEUS_SELECTOR", ""),
    )


ASSETS: list[Any] = [canary_deployment]
ASSET_CHECKS: list[Any] = []  # canary_verdict is a check spec of canary_deployment itself
JOBS: list[Any] = [canary_deployment_job]
SENSORS: list[Any] = [model_version_sensor]
RESOURCES: dict[str, Any] = {"deployer": Deployer.from_env(), "metric_source": metric_source_from_env()}

"""Resources of the monitoring assets: the prediction-log source and the metrics sink.

Both resolve their defaults from the environment when used, not when the code
location loads, so one deployment can point them elsewhere by configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from ml_platform.monitoring import paths
from ml_platform.monitoring.prometheus import PUSH_JOB, pushgateway_url
from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    from ml_platform.monitoring.logs import DayLog


class PredictionLog(dg.ConfigurableResource):
    """The serving prediction/feedback log, a folder of ``date=YYYY-MM-DD/`` partitions (local or fsspec URI)."""

    log_dir: str | None = Field(
        default=None, description="Log folder; default PREDICTION_LOG_DIR, else <platform home>/logs/predictions"
    )

    def root(self) -> str:
        return self.log_dir or paths.prediction_log_root()

    def read_day(self, day: str, spec: DatasetSpec) -> DayLog:
        """Predictions and feedback of one UTC day; only that day's folder is listed and read."""
        from ml_platform.monitoring.logs import read_day

        return read_day(self.root(), day, spec)


class DriftMetricsPusher(dg.ConfigurableResource):
    """Pushes drift gauges to a Prometheus Pushgateway; does nothing when no URL is configured."""

    url: str | None = Field(
        default=None, description="Pushgateway URL; default PROMETHEUS_PUSHGATEWAY_URL (unset: skip)"
    )
    job: str = Field(default=PUSH_JOB, description="The `job` label of the pushed group")
    timeout_seconds: float = Field(default=10.0, description="HTTP timeout of one push")

    def resolved_url(self) -> str | None:
        return self.url or pushgateway_url()

    def push(self, report: dict[str, Any]) -> str:
        """Push the report's gauges; return what happened, for the asset's metadata (never raises)."""
        url = self.resolved_url()
        if not url:
            return "skipped: PROMETHEUS_PUSHGATEWAY_URL is not set"
        from ml_platform.monitoring.prometheus import push_report

        try:
            push_report(url, report, job=self.job, timeout=self.timeout_seconds)
        except Exception as exc:  # the report stands even when alerting is unreachable; say so
            return f"failed: {url}: {type(exc).__name__}: {exc}"[:500]
        return f"pushed to {url} (job={self.job}, dataset={report['dataset']})"

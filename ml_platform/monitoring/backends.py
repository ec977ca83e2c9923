"""Where monitoring reads the prediction log and where it pushes drift gauges (plain Python).

``ml_platform.defs.resources`` wraps these as the ``prediction_log`` and ``drift_metrics``
resources. Both resolve their defaults from the environment when used, not at load time,
and take the model name: each model reads only its own log folder (and only lines naming it,
see :mod:`ml_platform.monitoring.logs`) and pushes its own Pushgateway group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml_platform.monitoring import paths
from ml_platform.monitoring.prometheus import PUSH_JOB, PUSHGATEWAY_URL_ENV, pushgateway_url
from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    from ml_platform.monitoring.logs import DayLog


@dataclass(frozen=True)
class PredictionLogSource:
    """The serving prediction/feedback logs of every model: ``<root>/<model>/date=YYYY-MM-DD/``.

    ``log_dir`` is the root holding every model's folder (local path or fsspec
    URI); None means ``PREDICTION_LOG_ROOT``, else ``<platform home>/logs/predictions``.
    """

    log_dir: str | None = None

    def base(self) -> str:
        """The folder holding every model's log folder."""
        return self.log_dir or paths.prediction_log_root()

    def root(self, model: str) -> str:
        """One model's log folder (what that model's servers get as ``PREDICTION_LOG_DIR``)."""
        return paths.per_model(self.base(), model)

    def read_day(
        self,
        model: str,
        day: str,
        spec: DatasetSpec,
        *,
        accept_legacy: bool | None = None,
        include_smoke: bool = False,
    ) -> DayLog:
        """One model's predictions and feedback of one UTC day; only its folder of that day is read.

        Lines naming another model are ignored and counted; lines without a model are accepted
        only for the default model (see :func:`ml_platform.monitoring.logs.read_day`).
        """
        from ml_platform.monitoring.logs import read_day

        return read_day(self.base(), day, spec, model=model, accept_legacy=accept_legacy, include_smoke=include_smoke)


@dataclass(frozen=True)
class DriftPusher:
    """Pushes each model's drift gauges to a Prometheus Pushgateway; does nothing when no URL is configured.

    ``url`` None means ``PROMETHEUS_PUSHGATEWAY_URL`` (unset: skip), resolved when used.
    """

    url: str | None = None
    job: str = PUSH_JOB
    timeout_seconds: float = 10.0

    def resolved_url(self) -> str | None:
        return self.url or pushgateway_url()

    def push(self, model: str, report: dict[str, Any]) -> str:
        """Replace ``model``'s group with the report's gauges; what happened, for the asset's metadata (never raises).

        A report of another model is refused (nothing pushed): a group holds one model's gauges only.
        """
        if report.get("model") != model:
            return f"refused: the report is of model {report.get('model')!r}, not {model!r}"
        url = self.resolved_url()
        if not url:
            return f"skipped: {PUSHGATEWAY_URL_ENV} is not set"
        from ml_platform.monitoring.prometheus import push_report

        try:
            push_report(url, report, job=self.job, timeout=self.timeout_seconds)
        except Exception as exc:  # the report stands even when alerting is unreachable; say so
            return f"failed: {url}: {type(exc).__name__}: {exc}"[:500]
        return f"pushed to {url} (job={self.job}, model={model})"

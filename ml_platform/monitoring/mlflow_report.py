"""Drift reports in MLflow: each day's Evidently HTML logged as a run artifact, linked into the MLflow UI.

A ``file://`` link in Dagster's UI cannot be opened by a browser (and means nothing on another
machine); the MLflow UI serves the same HTML from the run's artifacts. Each materialization of
``<model>/drift_report`` becomes one run of the experiment ``ml_platform-<model>-monitoring``
(tags: model, day, headline version; metrics: drift share, prediction PSI, live accuracy) holding
``evidently/drift_report-v<version>.html`` per version and ``drift_report.json``.

The UI link needs the UI's address: ``MLFLOW_UI_URL`` (``make dev`` starts ``mlflow ui`` on
http://127.0.0.1:5000 and sets it), else the tracking URI itself when it is an ``http(s)`` server.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_platform.monitoring.paths import is_remote

MLFLOW_UI_URL_ENV = "MLFLOW_UI_URL"
ARTIFACT_DIR = "evidently"


def experiment_for(model: str) -> str:
    """The MLflow experiment of one model's drift reports (training runs stay in ``ml_platform-<model>``)."""
    return f"ml_platform-{model}-monitoring"


def ui_base(tracking_uri: str) -> str | None:
    """The MLflow UI's base URL: ``MLFLOW_UI_URL``, else an ``http(s)`` tracking URI, else None."""
    configured = os.environ.get(MLFLOW_UI_URL_ENV, "").strip()
    if configured.startswith(("http://", "https://")):
        return configured.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return None


@dataclass(frozen=True)
class LoggedReport:
    """Where a drift report went in MLflow."""

    run_id: str
    experiment_id: str
    artifacts: dict[str, str]  # model version -> artifact path of its HTML
    ui_base: str | None

    def run_link(self) -> str | None:
        return f"{self.ui_base}/#/experiments/{self.experiment_id}/runs/{self.run_id}" if self.ui_base else None

    def artifact_link(self, version: str) -> str | None:
        path = self.artifacts.get(version)
        link = self.run_link()
        return f"{link}/artifacts/{path}" if link and path else None


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created by a concurrent run
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)


def _local_copy(uri: str, folder: Path) -> Path:
    """The HTML at ``uri`` as a local file (object storage is downloaded into ``folder``)."""
    if not is_remote(uri):
        return Path(uri.removeprefix("file://"))
    from upath import UPath

    target = folder / UPath(uri).name
    with UPath(uri).open("rb") as source:
        target.write_bytes(source.read())
    return target


def log_drift_report(client: Any, model: str, report: dict[str, Any], tracking_uri: str) -> LoggedReport:
    """Log the day's Evidently HTML (every version that has one) and the summary as one MLflow run."""
    experiment_id = _experiment_id(client, experiment_for(model))
    headline = report.get("headline_version")
    tags = {
        "ml_platform/model": model,
        "ml_platform/kind": "drift_report",
        "window_date": str(report.get("date") or report.get("window_date") or ""),
        "model_name": str(report.get("model_name") or ""),
        "headline_model_version": str(headline or ""),
        "status": str(report.get("status") or ""),
    }
    run = client.create_run(experiment_id, tags=tags, run_name=f"drift-{model}-{tags['window_date']}")
    run_id = run.info.run_id
    artifacts: dict[str, str] = {}
    status = "FAILED"
    try:
        with tempfile.TemporaryDirectory(prefix="ml_platform_drift_mlflow_") as tmp:
            for version, result in (report.get("versions") or {}).items():
                evidently = result.get("evidently") or {}
                uri = evidently.get("html_uri")
                if not uri:
                    continue
                local = _local_copy(str(uri), Path(tmp))
                client.log_artifact(run_id, str(local), ARTIFACT_DIR)
                artifacts[str(version)] = f"{ARTIFACT_DIR}/{local.name}"
            summary = Path(tmp) / "drift_report.json"
            summary.write_text(json.dumps(report, indent=2, default=str))
            client.log_artifact(run_id, str(summary))
        judged = (report.get("versions") or {}).get(headline) or {}
        for name in ("drift_share", "prediction_psi", "live_accuracy"):
            value = judged.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                client.log_metric(run_id, name, float(value))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return LoggedReport(run_id, experiment_id, artifacts, ui_base(tracking_uri))

"""Export a drift report's scores in Prometheus format, pushed to a Pushgateway.

A batch job cannot be scraped, so the drift job pushes its gauges to a
Pushgateway (``PROMETHEUS_PUSHGATEWAY_URL``) that Prometheus scrapes with
``honor_labels`` (see deploy/monitoring/). Contract with the alert rules in
deploy/monitoring/rules/drift.rules.yml, all pushed with ``job="ml_platform_drift"``
and labelled with ``model``, the platform model name (``iris``), and its ``dataset``:

=================================================================================  ===========================
metric                                                                             value
=================================================================================  ===========================
``ml_platform_drift_share{model, dataset, model_version}``                         share of drifted features
``ml_platform_prediction_psi{model, dataset, model_version}``                      PSI of predicted classes
``ml_platform_feature_drift_score{model, dataset, model_version, feature}``        p-value or distance
``ml_platform_drift_detected{model, dataset, model_version}``                      0 or 1
``ml_platform_live_accuracy{model, dataset, model_version}``                       feedback accuracy
=================================================================================  ===========================

Also pushed: ``ml_platform_feature_drifted{model, dataset, model_version, feature}``
(0/1; the score's direction depends on the method), ``ml_platform_drift_window_rows``
and ``ml_platform_feedback_rows{model, dataset, model_version}``.

Each model has its own Pushgateway group ``{job="ml_platform_drift", model=...}``:
one push replaces that model's group whole (HTTP PUT), so versions that left
the window stop being reported, and the groups of other models are untouched. Scores are
pushed only for judged versions: a window too small to judge pushes its row
counts alone, so no alert fires or resolves on it. ``live_accuracy`` is pushed
when the version had feedback (``feedback_rows`` says how much).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ml_platform.monitoring.decisions import JUDGED

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

PUSHGATEWAY_URL_ENV = "PROMETHEUS_PUSHGATEWAY_URL"
PUSH_JOB = "ml_platform_drift"


def pushgateway_url() -> str | None:
    return os.environ.get(PUSHGATEWAY_URL_ENV, "").strip() or None


def build_registry(report: dict[str, Any]) -> CollectorRegistry:
    """The gauges of one report, in a fresh registry."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    labels = ["model", "dataset", "model_version"]

    def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, [*labels, *extra], registry=registry)

    share = gauge("ml_platform_drift_share", "Share of drifted features in the latest drift report")
    psi = gauge("ml_platform_prediction_psi", "PSI of the predicted classes against the reference snapshot")
    score = gauge(
        "ml_platform_feature_drift_score",
        "Per-feature drift score (p-value for K-S/chi-square/Z-test: low = drift; distance otherwise: high = drift)",
        ("feature",),
    )
    drifted = gauge("ml_platform_feature_drifted", "1 when the feature drifted, else 0", ("feature",))
    detected = gauge("ml_platform_drift_detected", "1 when the drift share or the prediction PSI is beyond threshold")
    accuracy = gauge("ml_platform_live_accuracy", "Share of correct predictions among the window's feedback")
    rows = gauge("ml_platform_drift_window_rows", "Prediction rows of the model version in the window")
    feedback_rows = gauge("ml_platform_feedback_rows", "Feedback rows of the model version in the window")

    model, dataset = report["model"], report["dataset"]
    for version, result in report["versions"].items():
        key = {"model": model, "dataset": dataset, "model_version": str(version)}
        rows.labels(**key).set(result["rows"])
        feedback_rows.labels(**key).set(result["feedback_rows"])
        if result.get("live_accuracy") is not None:
            accuracy.labels(**key).set(result["live_accuracy"])
        if result["status"] != JUDGED:
            continue
        share.labels(**key).set(result["drift_share"])
        psi.labels(**key).set(result["prediction_psi"])
        detected.labels(**key).set(1 if result["drift_detected"] else 0)
        for feature in result["features"]:
            score.labels(**key, feature=feature["feature"]).set(feature["score"])
            drifted.labels(**key, feature=feature["feature"]).set(1 if feature["drifted"] else 0)
    return registry


def grouping_key(model: str) -> dict[str, str]:
    """The Pushgateway group of one model's drift gauges (besides ``job``)."""
    return {"model": model}


def push_report(url: str, report: dict[str, Any], *, job: str = PUSH_JOB, timeout: float = 10.0) -> None:
    """Replace the report's model's group on the Pushgateway with this report's gauges (raises on failure)."""
    from prometheus_client import push_to_gateway

    push_to_gateway(
        url,
        job=job,
        registry=build_registry(report),
        grouping_key=grouping_key(report["model"]),
        timeout=timeout,
    )

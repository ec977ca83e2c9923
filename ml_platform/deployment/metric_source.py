"""The ``metric_source`` resource: serving metrics of one track, from ``/metrics`` or from Prometheus.

Both backends answer the same question with the same numbers: the cumulative
``/predict`` request and 5xx counts, the ``/predict`` latency histogram and
the feedback counts of one track and model version
(:class:`~ml_platform.deployment.measurements.TrackReading`).

- ``scrape`` (default): GET each serving process's ``/metrics`` (the
  deployer says where they are) and sum the matching series.
- ``prometheus``: instant PromQL queries over Prometheus's HTTP API
  (``/api/v1/query``), e.g.
  ``sum(ml_serving_requests_total{endpoint=~"/?predict",track="canary",model_version="7"})``.
  ``prometheus_selector`` adds label matchers (e.g. ``job="ml-serving"``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field

from ml_platform.deployment.measurements import TrackReading

REQUESTS = "ml_serving_requests_total"
DURATION_BUCKET = "ml_serving_request_duration_seconds_bucket"
FEEDBACK = "ml_serving_feedback_total"
PREDICT_ENDPOINTS = ("/predict", "predict")


def _le(raw: str) -> float:
    return math.inf if raw in ("+Inf", "Inf", "inf") else float(raw)


def reading_from_text(
    texts: Iterable[str], track: str, model_version: str | None, at: float | None = None, model: str | None = None
) -> TrackReading:
    """Sum the samples of one track (and version, and platform model) over Prometheus text expositions."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = errors = correct = incorrect = 0.0
    buckets: dict[float, float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("track") != track:
                    continue
                if model is not None and labels.get("model") != model:
                    continue
                if model_version is not None and labels.get("model_version") != model_version:
                    continue
                if sample.name == REQUESTS and labels.get("endpoint") in PREDICT_ENDPOINTS:
                    requests += sample.value
                    if labels.get("status", "").startswith("5"):
                        errors += sample.value
                elif sample.name == DURATION_BUCKET and labels.get("endpoint") in PREDICT_ENDPOINTS:
                    le = _le(labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
                elif sample.name == FEEDBACK:
                    if labels.get("outcome") == "correct":
                        correct += sample.value
                    elif labels.get("outcome") == "incorrect":
                        incorrect += sample.value
    return TrackReading(
        at=time.time() if at is None else at,
        requests=requests,
        errors=errors,
        latency_buckets=tuple(sorted(buckets.items())),
        feedback_correct=correct,
        feedback_incorrect=incorrect,
    )


def _matchers(track: str, model_version: str | None, extra: str, model: str | None = None) -> str:
    parts = [f'model="{model}"'] if model is not None else []
    parts.append(f'track="{track}"')
    if model_version is not None:
        parts.append(f'model_version="{model_version}"')
    if extra.strip():
        parts.append(extra.strip().strip(","))
    return ",".join(parts)


def promql_queries(
    track: str, model_version: str | None, extra_selector: str = "", model: str | None = None
) -> dict[str, str]:
    """The PromQL the ``prometheus`` backend sends, by what it measures (one platform model's series)."""
    m = _matchers(track, model_version, extra_selector, model)
    predict = 'endpoint=~"/?predict"'
    return {
        "requests": f"sum({REQUESTS}{{{predict},{m}}})",
        "errors": f'sum({REQUESTS}{{{predict},status=~"5..",{m}}})',
        "latency_buckets": f"sum by (le) ({DURATION_BUCKET}{{{predict},{m}}})",
        "feedback": f"sum by (outcome) ({FEEDBACK}{{{m}}})",
    }


class MetricSource(BaseModel):
    """Where the canary analysis reads serving metrics: ``scrape`` (default) or ``prometheus``."""

    backend: Literal["scrape", "prometheus"] = Field(
        default="scrape", description="scrape: GET /metrics of the serving processes; prometheus: PromQL"
    )
    prometheus_url: str = Field(default="http://127.0.0.1:9090", description="Prometheus base URL")
    prometheus_selector: str = Field(default="", description='extra label matchers, e.g. job="ml-serving"')
    timeout_seconds: float = Field(default=5.0, description="HTTP timeout of one scrape or query")

    def describe(self) -> str:
        return "scrape of /metrics" if self.backend == "scrape" else f"Prometheus at {self.prometheus_url}"

    def read(self, track: str, model_version: str | None, targets: list[str], model: str | None = None) -> TrackReading:
        """Cumulative counters of ``track`` (``targets``: the /metrics URLs, used by ``scrape``).

        ``model`` (the platform model name) keeps two models with the same track and version number apart.
        """
        if self.backend == "prometheus":
            return self._read_prometheus(track, model_version, model)
        return self._read_scrape(track, model_version, targets, model)

    # -- scrape ----------------------------------------------------------------------------

    def _read_scrape(
        self, track: str, model_version: str | None, targets: list[str], model: str | None = None
    ) -> TrackReading:
        at = time.time()
        if not targets:
            return TrackReading(at=at, reachable=False, detail=f"no {track} targets to scrape")
        texts = []
        import httpx  # imported when used: loading the code location stays cheap

        with httpx.Client(timeout=self.timeout_seconds) as client:
            for url in targets:
                try:
                    response = client.get(url)
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    return TrackReading(at=at, reachable=False, detail=f"scrape of {url} failed: {exc!r}"[:300])
                texts.append(response.text)
        total = reading_from_text(texts, track, model_version, at, model)
        if len(targets) == 1:
            return total
        # Replicas: keep each target's counters too, so one replica's restart resets only its share.
        parts = tuple(
            (url, reading_from_text([text], track, model_version, at, model))
            for url, text in zip(targets, texts, strict=True)
        )
        return dataclasses.replace(total, parts=parts)

    # -- prometheus ------------------------------------------------------------------------

    def query(self, promql: str) -> list[dict]:
        """Run an instant query; the ``result`` vector."""
        import httpx

        response = httpx.get(
            f"{self.prometheus_url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=self.timeout_seconds
        )
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query failed: {body.get('error')}")
        return list(body["data"]["result"])

    def _read_prometheus(self, track: str, model_version: str | None, model: str | None = None) -> TrackReading:
        at = time.time()
        queries = promql_queries(track, model_version, self.prometheus_selector, model)
        import httpx

        try:
            results = {name: self.query(q) for name, q in queries.items()}
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            return TrackReading(at=at, reachable=False, detail=f"Prometheus query failed: {exc!r}"[:300])

        def scalar(name: str) -> float:
            vector = results[name]
            return float(vector[0]["value"][1]) if vector else 0.0

        buckets = tuple(sorted((_le(r["metric"]["le"]), float(r["value"][1])) for r in results["latency_buckets"]))
        outcomes = {r["metric"].get("outcome"): float(r["value"][1]) for r in results["feedback"]}
        return TrackReading(
            at=at,
            requests=scalar("requests"),
            errors=scalar("errors"),
            latency_buckets=buckets,
            feedback_correct=outcomes.get("correct", 0.0),
            feedback_incorrect=outcomes.get("incorrect", 0.0),
        )

"""Prometheus metrics, aggregated across the API process and every inference worker.

Names and labels are a contract with deploy/ (alert rules) and the canary
analysis; see docs/serving.md. Every series carries ``model``, the platform
model name (``MODEL_NAME``, e.g. ``iris``; constant per server), so series of
several models served side by side never add up. Inference runs in spawned worker processes, so
every metric uses prometheus_client's multiprocess mode: each process writes
its own memory-mapped files under ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics``
merges them. :func:`serving.state.prepare_multiproc_dir` must run (it sets the variable)
before this module is imported anywhere, which ``serving.__main__`` ensures.

Gauges use ``multiprocess_mode="max"`` (a single series without a ``pid`` label
that queries can use directly; "liveall" would add a ``pid`` label and new series
on every restart). ``ml_serving_live_accuracy`` is written by every API server
process, but what ``/metrics`` exports is recomputed from the merged feedback
counters (see :class:`_MergedRegistry`).
``ml_serving_model_info`` is written by every worker: "max" reads "at least one
worker serves this version with this runtime", which is what a swap in progress
looks like. The multiprocess dir is emptied at start-up, so no stale files of
earlier processes survive into the max.
"""

from __future__ import annotations

import glob
import os
from bisect import bisect_left
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# --- API process ------------------------------------------------------------------------------
REQUESTS = Counter(
    "ml_serving_requests_total",
    "HTTP requests by endpoint and status code (4xx and 5xx included).",
    ["model", "endpoint", "status", "model_version", "track"],
)
REQUEST_DURATION = Histogram(
    "ml_serving_request_duration_seconds",
    "HTTP request duration inside the server.",
    ["model", "endpoint", "model_version", "track"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = Counter(
    "ml_serving_predictions_total",
    "Predicted rows by class.",
    ["model", "predicted_class", "model_version", "track"],
)
FEEDBACK = Counter(
    "ml_serving_feedback_total",
    "Ground-truth labels received, by whether the prediction was correct.",
    ["model", "outcome", "model_version", "track"],
)
LIVE_ACCURACY = Gauge(
    "ml_serving_live_accuracy",
    "Share of labelled predictions that were correct since start-up (per model version).",
    ["model", "model_version", "track"],
    multiprocess_mode="max",
)
REGISTRY_UP = Gauge(
    "ml_serving_registry_up",
    "1 when the last MLflow registry check succeeded, else 0.",
    ["model", "track"],
    multiprocess_mode="max",
)
LOG_DROPPED = Counter(
    "ml_serving_log_dropped_total",
    "Prediction/feedback log submissions (one per request) dropped: the writer could not keep up or not write.",
    ["model", "event", "track"],
)
LOG_WRITE_ERRORS = Counter(
    "ml_serving_log_write_errors_total",
    "Failed prediction/feedback log writes (disk full, I/O error, ...); the writer keeps retrying.",
    ["model", "event", "track"],
)
LOG_WRITER_FAILING = Gauge(
    "ml_serving_log_writer_failing",
    "errno of a log writer's last failed write (e.g. 28 = ENOSPC); 0 once a write succeeds.",
    ["model", "event", "track"],
    multiprocess_mode="max",
)

# --- inference workers ------------------------------------------------------------------------
MODEL_INFO = Gauge(
    "ml_serving_model_info",
    "1 for the model version and runtime a worker serves.",
    ["model", "model_name", "model_version", "track", "runtime"],
    multiprocess_mode="max",
)
INFERENCE_ROWS = Counter(
    "ml_serving_inference_rows_total",
    "Rows run through the model by the inference workers.",
    ["model", "model_version", "track", "runtime"],
)
INFERENCE_DURATION = Histogram(
    "ml_serving_inference_duration_seconds",
    "Model call duration per batch in a worker.",
    ["model", "model_version", "track", "runtime"],
    buckets=LATENCY_BUCKETS,
)
BATCH_REQUESTS = Histogram(
    "ml_serving_batch_requests",
    "Requests merged into one model call by dynamic batching.",
    ["model", "track"],
    buckets=BATCH_BUCKETS,
)


# --- counts kept in this process until a scrape -------------------------------------------------


class PendingCounter:
    """Increments of a counter kept in a plain dict and added to the shared metric files at :func:`flush_pending`.

    A multiprocess metric costs a ``labels()`` lookup (a lock and a dict) and
    a locked write to a memory-mapped file per call: for a single-row request
    answered in the API process, five of them were a tenth of its CPU. Every
    metric the API process counts per request goes through here, and
    ``/metrics`` (served by this same process) flushes before it reads the
    files, so scrapes stay exact. Used on the event-loop thread only.
    """

    def __init__(self, metric: Counter) -> None:
        self.metric = metric
        self.pending: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        pending = self.pending
        pending[labels] = pending.get(labels, 0.0) + amount

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, amount in pending.items():
            self.metric.labels(*labels).inc(amount)


class PendingHistogram:
    """Observations of a histogram kept as bucket counts and a sum until :func:`flush_pending`.

    Flushing adds each bucket's count and the sum to the child's values
    directly: the same files ``observe`` writes, once per scrape instead of
    once per request (``_buckets`` and ``_sum`` are pinned by
    ``test_litserve_contract.py``).
    """

    def __init__(self, metric: Histogram, buckets: tuple[float, ...]) -> None:
        self.metric = metric
        self.bounds = (*buckets, float("inf"))
        self.pending: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        entry = self.pending.get(labels)
        if entry is None:
            entry = self.pending[labels] = [0.0] * (len(self.bounds) + 1)
        entry[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value, as observe()
        entry[-1] += value

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, entry in pending.items():
            child: Any = self.metric.labels(*labels)
            for bucket, count in zip(child._buckets, entry[:-1], strict=True):
                if count:
                    bucket.inc(count)
            child._sum.inc(entry[-1])


REQUESTS_PENDING = PendingCounter(REQUESTS)
REQUEST_DURATION_PENDING = PendingHistogram(REQUEST_DURATION, LATENCY_BUCKETS)
PREDICTIONS_PENDING = PendingCounter(PREDICTIONS)
INFERENCE_ROWS_PENDING = PendingCounter(INFERENCE_ROWS)
INFERENCE_DURATION_PENDING = PendingHistogram(INFERENCE_DURATION, LATENCY_BUCKETS)
BATCH_REQUESTS_PENDING = PendingHistogram(BATCH_REQUESTS, BATCH_BUCKETS)
_PENDING: tuple[PendingCounter | PendingHistogram, ...] = (
    REQUESTS_PENDING,
    REQUEST_DURATION_PENDING,
    PREDICTIONS_PENDING,
    INFERENCE_ROWS_PENDING,
    INFERENCE_DURATION_PENDING,
    BATCH_REQUESTS_PENDING,
)


def flush_pending() -> None:
    """Write this process's pending counts to its metric files (before a scrape reads them)."""
    for pending in _PENDING:
        pending.flush()


def failing_log_writers(model: str, track: str) -> dict[str, int]:
    """``{event: errno}`` for the log writers of any process whose last write failed (read from the metric files)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        families = registry.collect()
    else:  # a single process (tests): this process's own values
        families = LOG_WRITER_FAILING.collect()
    failing = {}
    for family in families:
        if family.name != "ml_serving_log_writer_failing":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.value and labels.get("track") == track and labels.get("model") == model:
                failing[labels["event"]] = int(sample.value)
    return failing


def _feedback_counts(families: Any) -> dict[tuple[str, str, str], list[float]]:
    """``{(model, model_version, track): [correct, incorrect]}`` from collected metric families."""
    counts: dict[tuple[str, str, str], list[float]] = {}
    for family in families:
        if family.name != "ml_serving_feedback":
            continue
        for sample in family.samples:
            if sample.name != "ml_serving_feedback_total":
                continue
            labels = sample.labels
            entry = counts.setdefault((labels["model"], labels["model_version"], labels["track"]), [0.0, 0.0])
            entry[0 if labels["outcome"] == "correct" else 1] += sample.value
    return counts


def merged_accuracy(model: str, model_version: str, track: str) -> float | None:
    """Live accuracy over the feedback of every process of this server (reads the counter files only)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return None
    files = glob.glob(os.path.join(directory, "counter_*.db"))
    correct, incorrect = _feedback_counts(MultiProcessCollector.merge(files)).get((model, model_version, track), (0, 0))
    return correct / (correct + incorrect) if correct + incorrect else None


class _MergedRegistry(CollectorRegistry):
    """The multiprocess files, with ``ml_serving_live_accuracy`` recomputed from the merged feedback counters.

    Each API server process counts the feedback it receives: its own accuracy would be a share of
    part of the feedback, and "max" over processes is no accuracy at all. The merged
    ``ml_serving_feedback_total`` counts every process's feedback exactly once, so the gauge is
    derived from it at each scrape (correct / (correct + incorrect) per model, version and track).
    """

    def __init__(self) -> None:
        super().__init__()
        MultiProcessCollector(self)

    def collect(self) -> Any:
        families = list(super().collect())
        counts = _feedback_counts(families)
        for family in families:
            if family.name != "ml_serving_live_accuracy":
                continue
            samples = []
            for sample in family.samples:
                labels = sample.labels
                correct, incorrect = counts.get((labels["model"], labels["model_version"], labels["track"]), (0, 0))
                if correct + incorrect:
                    samples.append(sample._replace(value=correct / (correct + incorrect)))
            family.samples = samples
        return iter(families)


def render_metrics() -> tuple[bytes, str]:
    """The merged metrics of all processes in Prometheus text format.

    This process's pending counts are flushed first; other API server processes flush theirs every
    ``serving.service.HOUSEKEEPING_SECONDS`` (0.5 s), so their last half second may be missing.
    """
    flush_pending()
    return generate_latest(_MergedRegistry()), CONTENT_TYPE_LATEST

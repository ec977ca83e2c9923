"""The API process's state and logic behind the routes: predictions, feedback, health.

One :class:`ServingContext` lives in the API process (built in the main
process, inherited when LitServe forks the API server). Routes stay thin; the
bookkeeping that needs to see every worker's answers lives here.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from serving import metrics
from serving.config import ServingConfig
from serving.feedback import LedgerUnavailable, LiveAccuracy, Receipt, ReceiptExpired, ledger_from_env
from serving.inline import InlinePredictor
from serving.predlog import JsonlWriter, render_feedback
from serving.refresher import ModelRefresher
from serving.schema import FeedbackRequest, RequestError, RequestSchema
from serving.state import RuntimeLayout, read_inline_statuses, read_worker_statuses

log = logging.getLogger("serving")

HOUSEKEEPING_SECONDS = 0.5  # /metrics lags the requests of other API server processes by at most this
BODY_OVERHEAD_BYTES = 4096  # the JSON around the rows: keys, brackets, a request id, a receipt
NUMBER_BYTES = 24  # the longest float64 JSON number, e.g. -1.2345678901234567e-300
LAYOUT_BYTES = 24  # per value: ": ", ",\n" and pretty-printing indentation


def derived_body_limit(schema: RequestSchema) -> int:
    """The largest ``/predict`` or ``/feedback`` body that ``MAX_BATCH_ROWS`` rows can need, in bytes.

    Sized for the wordier ``records`` form (every row repeats the feature
    names), with the longest number or category at every position, pretty
    printed: anything larger cannot be a valid request, so it is refused from
    ``Content-Length`` before a byte of it is read or parsed.
    """
    row = LAYOUT_BYTES  # braces and indentation of the row itself
    for feature in schema.spec.features:
        value = NUMBER_BYTES if feature.type != "category" else max(len(json.dumps(c)) for c in feature.categories)
        row += len(json.dumps(feature.name)) + LAYOUT_BYTES + value
    label = max(len(json.dumps(v)) for v in [*schema.class_values, *schema.class_labels]) + LAYOUT_BYTES
    return BODY_OVERHEAD_BYTES + schema.max_rows * max(row, label)


log = logging.getLogger(__name__)


class ServingContext:
    """Everything the API-process routes share."""

    def __init__(
        self,
        config: ServingConfig,
        layout: RuntimeLayout,
        schema: RequestSchema,
        refresher: ModelRefresher,
        prediction_log_dir: Path,
    ) -> None:
        self.config = config
        self.track = config.track
        self.model = config.model_name
        self.max_body_bytes = config.max_body_bytes or derived_body_limit(schema)
        self.layout = layout
        self.schema = schema
        self.refresher = refresher
        refresher.on_reachability = self.on_reachability
        self.ledger = ledger_from_env(os.environ, config.feedback_cache_size)  # which rows were labelled
        self.accuracy = LiveAccuracy()
        self.feedback_log = JsonlWriter(
            prediction_log_dir,
            "feedback",
            config.track,
            model=self.model,
            on_drop=metrics.LOG_DROPPED.labels(self.model, "feedback", config.track).inc,
        )
        self.workers_ready: Callable[[], bool] = lambda: False
        self.inline: InlinePredictor | None = None  # small ONNX requests answered in this process
        self._housekeeping: asyncio.TimerHandle | None = None
        self._class_labels = schema.class_labels
        self._class_values = schema.class_values

    # -- lifecycle (API process) ------------------------------------------------------------

    def start(self) -> None:
        metrics.REGISTRY_UP.labels(self.model, self.track).set(1 if self.refresher.reachable else 0)
        self.feedback_log.start()
        if self.inline is not None:
            self.inline.start()
        self.refresher.start()
        self._schedule_housekeeping()

    def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        self.refresher.stop()
        if self.inline is not None:
            self.inline.stop()
        metrics.flush_pending()  # the counts of this process's last requests reach the metric files
        self.feedback_log.close()
        self.ledger.close()

    def _schedule_housekeeping(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (unit use)
            return
        self._housekeeping = loop.call_later(HOUSEKEEPING_SECONDS, self._housekeep)

    def _housekeep(self) -> None:
        """Every ``HOUSEKEEPING_SECONDS`` on the event loop: flush pending metric counts, follow published versions.

        A scrape of ``/metrics`` reaches one API server process and flushes only that one's counts, so
        every process flushes its own on this timer too: ``/metrics`` is exact up to this delay.
        """
        try:
            metrics.flush_pending()
            self.refresher.follow_published()
        except Exception:  # never let the timer die
            log.exception("housekeeping failed")
        self._schedule_housekeeping()

    def current_version(self) -> str:
        return self.refresher.current.version

    def on_reachability(self, reachable: bool) -> None:
        metrics.REGISTRY_UP.labels(self.model, self.track).set(1 if reachable else 0)

    # -- predictions ------------------------------------------------------------------------

    def record_prediction(self, request_id: str, model_version: str, class_index: np.ndarray) -> None:
        """Count a prediction's classes (feedback needs nothing stored: the receipt carries the prediction)."""
        if len(class_index) == 1:  # the common case, without numpy
            counts: Iterable[tuple[int, int]] = [(int(class_index[0]), 1)]
        else:
            counts = enumerate(np.bincount(class_index, minlength=len(self._class_labels)).tolist())
        for index, count in counts:
            if count:
                labels = (self.model, self._class_labels[index], model_version, self.track)
                metrics.PREDICTIONS_PENDING.inc(labels, count)

    # -- feedback ---------------------------------------------------------------------------

    def apply_feedback(self, feedback: FeedbackRequest, receipt: Receipt) -> dict[str, Any]:
        """Score ground truth against the prediction a verified receipt names; update metrics and the log.

        Counted under the receipt's version and track, whichever replica this is; each row once
        across all processes sharing the ledger (409 on a replay).
        """
        rows_total = receipt.rows
        if feedback.rows is None:
            if len(feedback.labels) != rows_total:
                raise RequestError(
                    422,
                    "label count mismatch",
                    f"the prediction has {rows_total} rows, got {len(feedback.labels)} labels",
                )
            rows = np.arange(rows_total)
        else:
            if feedback.rows[0] >= rows_total:
                raise RequestError(422, "row out of range", f"the prediction has {rows_total} rows (0-based)")
            rows = np.asarray(feedback.rows)
        try:
            already = self.ledger.claim(feedback.request_id, rows.tolist(), receipt.issued_at)
        except ReceiptExpired as exc:
            raise RequestError(404, "receipt expired", str(exc)) from None
        except LedgerUnavailable as exc:  # nothing counted: the client retries (503, like a full server)
            log.warning("feedback not recorded: %s", exc)
            raise RequestError(503, "feedback ledger busy", "nothing was recorded; retry shortly") from None
        if already:
            raise RequestError(
                409, "feedback already recorded", f"rows {already[:20]} of {feedback.request_id!r} are labelled"
            )
        labels = np.asarray(feedback.labels)
        predicted = receipt.class_index[rows]
        correct = int((predicted == labels).sum())
        total = len(rows)
        version, track = receipt.model_version, receipt.track
        if correct:
            metrics.FEEDBACK.labels(self.model, "correct", version, track).inc(correct)
        if total - correct:
            metrics.FEEDBACK.labels(self.model, "incorrect", version, track).inc(total - correct)
        accuracy = self.accuracy.record(version, correct, total, track)
        metrics.LIVE_ACCURACY.labels(self.model, version, track).set(accuracy)
        if self.config.api_servers > 1:  # this process saw part of the feedback: the server's share from all of it
            merged = metrics.merged_accuracy(self.model, version, track)
            accuracy = accuracy if merged is None else merged
        values = self._class_values
        self.feedback_log.submit(
            partial(
                render_feedback,
                model=self.model,
                request_id=feedback.request_id,
                rows=rows.tolist(),
                labels=[values[i] for i in labels.tolist()],
                predictions=[values[i] for i in predicted.tolist()],
                model_version=version,
                track=track,
                at=time.time(),
            )
        )
        return {
            "request_id": feedback.request_id,
            "model_version": version,
            "accepted": total,
            "correct": correct,
            "live_accuracy": accuracy,
        }

    # -- health -----------------------------------------------------------------------------

    def health(self, detailed: bool = False) -> tuple[int, dict[str, Any]]:
        """``(HTTP status, body)``: 200 ok/degraded while a model serves, 503 unavailable otherwise.

        Raw error texts (refresh exceptions, worker load errors) only when
        ``detailed`` (a caller with the admin token); otherwise safe summaries.
        """
        self.refresher.follow_published()
        workers = read_worker_statuses(self.layout)
        ready = self.workers_ready()
        desired = self.refresher.current
        inline = self.inline.status() if self.inline is not None else None
        # every API process's own model (with several API processes, a swap is complete only when all swapped)
        others = [s for s in read_inline_statuses(self.layout) if inline is None or s.get("pid") != inline.get("pid")]
        answering = [*workers, *([inline] if inline else []), *others]
        serving_versions = sorted({w["model_version"] for w in answering if w.get("model_version")})
        runtimes = sorted({w["runtime"] for w in answering if w.get("runtime")})
        problems = []
        if not ready or not serving_versions:
            status = "unavailable"
            problems.append("inference workers are not ready")
        else:
            status = "ok"
            if not self.refresher.reachable:
                problems.append("the MLflow registry is unreachable; serving the loaded model")
            elif self.refresher.last_refresh_error:
                problems.append("the last model refresh failed; serving the loaded model")
            problems += [f"worker {w['worker_id']}: {_worker_error(w, detailed)}" for w in workers if w.get("error")]
            if inline and inline.get("error"):
                problems.append(f"API process model: {_worker_error(inline, detailed)}")
            problems += [
                f"API process {s.get('pid')} model: {_worker_error(s, detailed)}" for s in others if s.get("error")
            ]
            for event, code in sorted(metrics.failing_log_writers(self.model, self.track).items()):
                name = errno.errorcode.get(code, str(code))
                problems.append(f"the {event} log cannot be written ({name}); its lines are dropped and counted")
            if problems:
                status = "degraded"
        body = {
            "status": status,
            "problems": problems,
            "platform_model": self.model,
            "track": self.track,
            "model": {
                "name": desired.name,
                "version": desired.version,
                "uri": desired.uri,
                "runtime": runtimes[0] if len(runtimes) == 1 else runtimes,
                "serving_versions": serving_versions,
                "swap_in_progress": serving_versions != [desired.version],
                "data_version": desired.data_version,
                "workers_ready": ready,
                "workers": [
                    {
                        "worker_id": w.get("worker_id"),
                        "pid": w.get("pid"),
                        "model_version": w.get("model_version"),
                        "runtime": w.get("runtime"),
                        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(w["loaded_at"]))
                        if w.get("loaded_at")
                        else None,
                        "error": _worker_error(w, detailed) if w.get("error") else None,
                    }
                    for w in workers
                ],
                "inline": None
                if inline is None
                else {
                    "max_rows": self.config.inline_max_rows,
                    "pid": inline.get("pid"),
                    "model_version": inline.get("model_version"),
                    "runtime": inline.get("runtime"),
                    "error": _worker_error(inline, detailed) if inline.get("error") else None,
                },
                "api_processes": [
                    {
                        "pid": s.get("pid"),
                        "model_version": s.get("model_version"),
                        "runtime": s.get("runtime"),
                        "error": _worker_error(s, detailed) if s.get("error") else None,
                    }
                    for s in read_inline_statuses(self.layout)
                ],
            },
            "mlflow": self.refresher.snapshot(detailed),
        }
        return (503 if status == "unavailable" else 200), body


def _worker_error(status: dict[str, Any], detailed: bool) -> str:
    """A worker's load error: raw for admin callers, a summary otherwise (paths and exception texts stay in the log)."""
    if detailed:
        return str(status["error"])
    return "could not load the desired model version; still serving the loaded one (details in the server log)"

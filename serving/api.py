"""The inference worker: a LitAPI with its batching loop, hot swap and prediction log.

LitServe spawns ``WORKERS`` processes, each running :class:`ServingLoop` over
:class:`ModelAPI`. A worker receives already-validated payloads from the API
process, merges concurrent requests into one model call (dynamic batching),
answers each request with its finished JSON body (including the signed
feedback receipt, see :mod:`serving.feedback`) plus the predicted class
indices (which the API process needs for feedback and metrics), and queues one
prediction-log line per request to its own log file.

Hot swap: between batches (and every 0.1 s when idle) the worker
checks the desired-model marker (a ``stat``, at most every 0.1 s). When it
names another version the worker loads it in a background thread while it
keeps serving the old one, then swaps the reference between two batches: a
request is answered entirely by one version and none fails because of the swap.

Nothing here imports MLflow unless a version has no verified ONNX graph.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from queue import Empty
from typing import Any, NamedTuple

import litserve as ls
import numpy as np
from litserve.loops.base import LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType, PickleableHTTPException
from starlette.exceptions import HTTPException

from ml_platform.ml.training import class_label
from serving.encoding import dumps, json_key, objects_array
from serving.errors import error_body
from serving.feedback import FeedbackSigner
from serving.predlog import JsonlWriter, PredictionLogFormat
from serving.registry import ModelBundle, load_bundle_spec
from serving.runtime import ModelRuntime, Prediction, load_runtime
from serving.state import MarkerWatcher, RuntimeLayout, read_desired_model, write_inline_status, write_worker_status
from serving.supervision import die_with_parent

log = logging.getLogger("serving.worker")

# An idle worker wakes this often to check the desired-model marker (a stat): small requests may all be answered by
# the API process (serving.inline), so a worker must notice a new version and finish its swap without traffic.
IDLE_POLL_SECONDS = 0.1
LOG_FLUSH_SECONDS = 0.25
INLINE_LOG_FLUSH_SECONDS = 0.05


class PredictPayload(NamedTuple):
    """What the API process sends a worker for one validated ``/predict`` request."""

    request_id: str
    rows: np.ndarray | list[tuple[Any, ...]]
    received_at: float  # Unix time the request arrived in the API process
    traffic: str | None = None  # "smoke" for the platform's own probes (X-ML-Platform-Traffic), logged as such

    def __repr__(self) -> str:  # LitServe formats requests into debug messages even when debug is off
        return f"PredictPayload(request_id={self.request_id!r}, rows={len(self.rows)})"


class WorkerResult(NamedTuple):
    """A worker's answer to one request: the finished body plus bookkeeping for the API process."""

    status: int
    body: bytes
    class_index: np.ndarray | None
    model_version: str
    runtime: str


@dataclass
class ActiveModel:
    """A loaded version with everything precomputed that each response needs."""

    runtime: ModelRuntime
    loaded_at: float
    track: str
    model: str  # the platform model name (constant per process)
    signer: FeedbackSigner = field(repr=False)
    log_format: PredictionLogFormat = field(init=False)
    prediction_json: list[bytes] = field(init=False)
    label_json: list[bytes] = field(init=False)
    label_names: list[str] = field(init=False)
    header: bytes = field(init=False)
    receipt_prefix: bytes = field(init=False)

    def __post_init__(self) -> None:
        spec = self.runtime.spec
        classes = list(spec.target.classes)
        self.label_names = [class_label(spec, c) for c in classes]
        self.log_format = PredictionLogFormat(self.model, spec.feature_names, classes, self.label_names)
        self.prediction_json = [dumps(c) for c in classes]
        self.label_json = [json_key(label) for label in self.label_names]
        self.header = (
            b',"model_name":'
            + dumps(self.bundle.name)
            + b',"model_version":'
            + dumps(self.bundle.version)
            + b',"track":'
            + dumps(self.track)
            + b',"runtime":'
            + dumps(self.runtime.kind)
        )
        self.receipt_prefix = self.signer.prefix(self.model, self.bundle.name, self.bundle.version, self.track)

    @property
    def bundle(self) -> ModelBundle:
        return self.runtime.bundle

    def body(self, request_id: str, prediction: Prediction) -> bytes:
        """The ``/predict`` response body for one request, with its signed feedback receipt."""
        index = prediction.class_index.tolist()
        probs = prediction.probabilities
        probabilities = objects_array(self.label_names, probs) if probs is not None else b"null"
        return b"".join(
            (
                b'{"request_id":',
                dumps(request_id),
                b',"feedback_token":"',
                self.signer.sign(self.receipt_prefix, request_id, prediction.class_index),
                b'"',
                self.header,
                b',"predictions":[',
                b",".join([self.prediction_json[i] for i in index]),
                b'],"probabilities":',
                probabilities,
                b',"class_labels":[',
                b",".join([self.label_json[i] for i in index]),
                b"]}",
            )
        )


def _concat(rows: list[np.ndarray | list[tuple[Any, ...]]]) -> np.ndarray | list[tuple[Any, ...]]:
    if len(rows) == 1:
        return rows[0]
    if all(isinstance(r, np.ndarray) for r in rows):
        return np.concatenate(rows)
    return [row for part in rows for row in part]


def _slice(prediction: Prediction, start: int, stop: int) -> Prediction:
    probs = prediction.probabilities
    return Prediction(prediction.class_index[start:stop], None if probs is None else probs[start:stop])


class ModelAPI(ls.LitAPI):
    """Model inference in a LitServe worker (configured in the API process, pickled into each worker)."""

    def __init__(
        self,
        *,
        runtime_root: str,
        track: str,
        model: str,
        prediction_log_dir: str,
        runtime_preference: str = "auto",
        max_batch_size: int = 32,
        batch_timeout: float = 0.0,
        batch_row_limit: int = 512,
        log_level: str = "info",
        feedback_key: bytes,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=ServingLoop())
        self.runtime_root = runtime_root
        self.track = track
        self.model = model
        self.prediction_log_dir = prediction_log_dir
        self.runtime_preference = runtime_preference
        self.batch_row_limit = batch_row_limit
        self.log_level = log_level
        self.signer = FeedbackSigner(feedback_key)  # the deployment's receipt key, pickled into each worker
        self.parent_pid = os.getpid()  # the main process, which spawns the workers
        self.inline = False  # True for the copy answering small requests in the API process
        self.inline_status: dict[str, Any] = {}

    # -- LitAPI hooks -----------------------------------------------------------------------

    def setup(self, device: str) -> None:
        """Load the desired version, start the log writer, report readiness (runs in the worker)."""
        logging.basicConfig(level=self.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.worker_id = os.environ.get("LITSERVE_WORKER_ID", str(os.getpid()))
        self._start_model()
        # SIGTERM/SIGINT (e.g. sent to the whole process group) do not stop a worker: the API server may still be
        # draining requests for it. The main process sends a stop message once it has; a worker whose main process
        # vanished gets SIGTERM from the kernel and stops at its next idle check (see should_stop).
        self._stop_requested = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        die_with_parent(signal.SIGTERM, self.parent_pid)
        gc.freeze()  # modules and the loaded model are permanent: keep GC pauses short

    def start_inline(self) -> None:
        """Serve in the API process itself (see :mod:`serving.inline`): same loading, hash checks, hot swap and log.

        Its status is kept in memory (``inline_status``) rather than in a worker status file, so ``/health``'s
        worker list stays the list of LitServe workers.
        """
        self.worker_id = "api"
        self.inline = True
        self._start_model()

    def _start_model(self) -> None:
        from serving import metrics

        self._metrics = metrics
        self.layout = RuntimeLayout(Path(self.runtime_root))
        self.watcher = MarkerWatcher(self.layout)
        desired = self.watcher.poll() or read_desired_model(self.layout)
        self.active = self._load(desired)
        self._desired = desired
        self._pending: ActiveModel | None = None
        self._loading: str | None = None
        self._failed: str | None = None
        self._error: str | None = None
        self.log_writer = JsonlWriter(
            Path(self.prediction_log_dir),
            "predictions",
            self.track,
            model=self.model,
            on_drop=metrics.LOG_DROPPED.labels(self.model, "prediction", self.track).inc,
            # the API process writes more often, in smaller bursts: its event loop waits while the thread holds the GIL
            flush_interval=INLINE_LOG_FLUSH_SECONDS if self.inline else LOG_FLUSH_SECONDS,
        ).start()
        self._publish(self.active)
        self._report()

    def decode_request(self, request: PredictPayload) -> PredictPayload:
        """Payloads arrive validated and decoded (LitServe requires the hook and its ``request`` parameter)."""
        return request

    def predict(self, payloads: list[PredictPayload]) -> list[WorkerResult]:
        """Answer a batch: one model call for all its rows; per-request calls only if that call fails."""
        active = self.active  # one version for the whole batch, even if a swap lands meanwhile
        sizes = [len(p.rows) for p in payloads]
        started = time.perf_counter()
        predictions: list[Prediction | Exception]
        try:
            if len(payloads) == 1:  # the inline path and unbatched requests: nothing to merge or split
                predictions = [active.runtime.predict(payloads[0].rows)]
            else:
                merged = active.runtime.predict(_concat([p.rows for p in payloads]))
                offsets = np.cumsum([0, *sizes])
                predictions = [_slice(merged, offsets[i], offsets[i + 1]) for i in range(len(payloads))]
        except Exception as exc:
            if len(payloads) == 1:
                predictions = [exc]
            else:  # isolate the request that broke the batch
                predictions = []
                for payload in payloads:
                    try:
                        predictions.append(active.runtime.predict(payload.rows))
                    except Exception as single_exc:
                        predictions.append(single_exc)
        duration = time.perf_counter() - started
        done_at = time.time()
        version, kind = active.bundle.version, active.runtime.kind
        self._observe_call(version, kind, duration, len(payloads))

        return [
            self._result(active, payload, prediction, done_at)
            for payload, prediction in zip(payloads, predictions, strict=True)
        ]

    def predict_one(self, payload: PredictPayload) -> WorkerResult:
        """``predict([payload])[0]`` without the batch bookkeeping (the API process's inline path)."""
        active = self.active
        started = time.perf_counter()
        prediction: Prediction | Exception
        try:
            prediction = active.runtime.predict(payload.rows)
        except Exception as exc:
            prediction = exc
        self._observe_call(active.bundle.version, active.runtime.kind, time.perf_counter() - started, 1)
        return self._result(active, payload, prediction, time.time())

    def _result(
        self, active: ActiveModel, payload: PredictPayload, prediction: Prediction | Exception, done_at: float
    ) -> WorkerResult:
        """One request's answer; queues its prediction-log line."""
        version, kind = active.bundle.version, active.runtime.kind
        if isinstance(prediction, Exception):
            log.warning("model rejected request %s: %s", payload.request_id, prediction)
            detail = f"{type(prediction).__name__}: {prediction}"[:500]
            return WorkerResult(422, error_body("the model rejected the input", detail), None, version, kind)
        self._count_rows(version, kind, len(prediction.class_index))
        body = active.body(payload.request_id, prediction)
        self.log_writer.submit(
            partial(
                active.log_format.render,
                request_id=payload.request_id,
                received_at=payload.received_at,
                latency_ms=(done_at - payload.received_at) * 1000.0,
                model_name=active.bundle.name,
                model_version=version,
                track=self.track,
                rows=payload.rows,
                class_index=prediction.class_index,
                probabilities=prediction.probabilities,
                traffic=payload.traffic,
            )
        )
        return WorkerResult(200, body, prediction.class_index, version, kind)

    def _observe_call(self, version: str, kind: str, duration: float, requests: int) -> None:
        metrics = self._metrics
        if self.inline:  # on the API process's event loop: pending counts, flushed by /metrics
            metrics.INFERENCE_DURATION_PENDING.observe((self.model, version, self.track, kind), duration)
            metrics.BATCH_REQUESTS_PENDING.observe((self.model, self.track), requests)
        else:
            metrics.INFERENCE_DURATION.labels(self.model, version, self.track, kind).observe(duration)
            metrics.BATCH_REQUESTS.labels(self.model, self.track).observe(requests)

    def _count_rows(self, version: str, kind: str, rows: int) -> None:
        if self.inline:
            self._metrics.INFERENCE_ROWS_PENDING.inc((self.model, version, self.track, kind), rows)
        else:
            self._metrics.INFERENCE_ROWS.labels(self.model, version, self.track, kind).inc(rows)

    # -- model lifecycle --------------------------------------------------------------------

    def _load(self, bundle: ModelBundle) -> ActiveModel:
        spec = load_bundle_spec(bundle)
        runtime = load_runtime(bundle, spec, self.runtime_preference)
        log.info("worker %s loaded %s (%s runtime)", self.worker_id, bundle.uri, runtime.kind)
        return ActiveModel(runtime, time.time(), self.track, self.model, self.signer)

    def _load_in_background(self, bundle: ModelBundle) -> None:
        try:
            self._pending = self._load(bundle)
            self._error = None
        except Exception as exc:
            log.exception(
                "worker %s could not load %s; still serving %s", self.worker_id, bundle.uri, self.active.bundle.uri
            )
            self._failed = bundle.version
            self._error = f"cannot load {bundle.uri}: {type(exc).__name__}: {exc}"[:500]
            self._report()
        finally:
            self._loading = None

    def maintain(self) -> None:
        """Between batches: notice a new desired version, load it aside, swap when ready."""
        changed = self.watcher.poll()
        if changed is not None:
            self._desired = changed
            if changed.version != self._failed:
                self._failed = None
        desired = self._desired
        if desired.version == self.active.bundle.version:
            return
        pending = self._pending
        if pending is not None and pending.bundle.version == desired.version:
            previous, self.active, self._pending = self.active, pending, None
            self._publish(self.active, previous)
            self._report()
            log.info("worker %s swapped %s -> %s", self.worker_id, previous.bundle.uri, self.active.bundle.uri)
        elif self._loading is None and self._failed != desired.version:
            self._loading = desired.version
            threading.Thread(target=self._load_in_background, args=(desired,), name="model-loader", daemon=True).start()

    def _publish(self, active: ActiveModel, previous: ActiveModel | None = None) -> None:
        info = self._metrics.MODEL_INFO
        if previous is not None:
            previous_bundle = previous.bundle
            info.labels(
                self.model, previous_bundle.name, previous_bundle.version, self.track, previous.runtime.kind
            ).set(0)
        info.labels(self.model, active.bundle.name, active.bundle.version, self.track, active.runtime.kind).set(1)

    def _report(self) -> None:
        status = {
            "model_version": self.active.bundle.version,
            "runtime": self.active.runtime.kind,
            "loaded_at": self.active.loaded_at,
            "error": self._error,
        }
        if self.inline:
            self.inline_status = {**status, "worker_id": self.worker_id, "pid": os.getpid()}
            write_inline_status(self.layout, self.inline_status)  # the other API processes' /health sees it
        else:
            write_worker_status(self.layout, self.worker_id, status)

    def close(self) -> None:
        """Flush the prediction log (called when the worker stops)."""
        writer = getattr(self, "log_writer", None)
        if writer is not None:
            writer.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def should_stop(self) -> bool:
        """Checked when idle: signalled, and the main process is stopping the server or is gone.

        Covers what the stop message cannot reach: a worker that died holding
        the request pipe's read lock, or a main process that was killed.
        """
        return self._stop_requested and (os.getppid() != self.parent_pid or self.layout.stop_marker.exists())


class ServingLoop(LitLoop):
    """LitServe worker loop with dynamic batching that blocks while idle.

    Takes the first queued request (waiting up to 0.1 s, so an idle worker
    costs nothing and still notices model swaps), then whatever else is queued
    up to ``max_batch_size`` requests or ``batch_row_limit`` rows, waiting at
    most ``batch_timeout`` for more. The row limit keeps big requests apart:
    merging them saves nothing (the model's cost per row is flat beyond a few
    hundred rows) and would leave one worker with several while another
    idles. The stock ``BatchedLoop`` polls the queue every millisecond while idle and
    always waits the full ``batch_timeout``; under load the queue fills while
    the model runs, so greedy batching needs no added wait.
    """

    def __call__(
        self,
        lit_api: ModelAPI,
        device: str,
        worker_id: int,
        request_queue: Any,
        transport: Any,
        workers_setup_status: Any,
        callback_runner: Any,
    ) -> None:
        while True:
            batch = self._collect(lit_api, request_queue, transport)
            if batch is None or (not batch and lit_api.should_stop()):
                lit_api.close()  # stop message from the main process: flush the prediction log, then exit
                return
            lit_api.maintain()
            if not batch:
                continue
            try:
                results = lit_api.predict([payload for _, _, payload in batch])
            except Exception:  # a bug, not bad input: answer rather than leave clients hanging
                log.exception("batch failed")
                for response_queue_id, uid, _ in batch:
                    self._fail(transport, response_queue_id, uid, 422, "inference failed")
                continue
            self._respond(transport, batch, results)

    def _respond(self, transport: Any, batch: list[tuple[int, str, Any]], results: list[WorkerResult]) -> None:
        """Send a batch's answers, one message per API server when the transport can (fewer wake-ups)."""
        by_consumer: dict[int, list[Any]] = {}
        for (response_queue_id, uid, _), result in zip(batch, results, strict=True):
            message = (uid, (result, LitAPIStatus.OK, LoopResponseType.REGULAR, self.worker_id))
            by_consumer.setdefault(response_queue_id, []).append(message)
        for response_queue_id, messages in by_consumer.items():
            if hasattr(transport, "send_many"):
                transport.send_many(messages, response_queue_id)
            else:
                for message in messages:
                    transport.send(message, consumer_id=response_queue_id)

    def _fail(self, transport: Any, response_queue_id: int, uid: str, status: int, detail: str) -> None:
        error = PickleableHTTPException.from_exception(HTTPException(status, detail))
        self.put_response(transport, response_queue_id, uid, error, LitAPIStatus.ERROR, LoopResponseType.REGULAR)

    def _collect(self, lit_api: ModelAPI, request_queue: Any, transport: Any) -> list[tuple[int, str, Any]] | None:
        """The next batch: [] when idle, None when the server is shutting down."""
        try:
            item = request_queue.get(timeout=IDLE_POLL_SECONDS)
        except Empty:
            return []
        batch: list[tuple[int, str, Any]] = []
        rows = 0
        deadline = time.monotonic() + lit_api.batch_timeout
        while True:
            if item[1] is None:  # LitServe's stop sentinel
                return None
            response_queue_id, uid, enqueued, payload = item
            timeout = lit_api.request_timeout
            if timeout not in (None, False, -1) and time.monotonic() - enqueued > timeout:
                self._fail(transport, response_queue_id, uid, 504, "request timed out waiting for a worker")
            else:
                batch.append((response_queue_id, uid, payload))
                rows += len(payload.rows)
            if len(batch) >= lit_api.max_batch_size or rows >= lit_api.batch_row_limit:
                return batch
            try:
                if lit_api.batch_timeout > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return batch
                    item = request_queue.get(timeout=remaining)
                else:
                    item = request_queue.get_nowait()
            except Empty:
                return batch

"""The LitServe server, adapted: our routes, middleware, error format and lifespan.

LitServe keeps what it is good at: spawning, readiness and supervision of
the inference workers, the request/response bookkeeping between the API
server and the workers, graceful shutdown. This subclass swaps in

- pipe-based request/response channels instead of manager-proxy queues
  (:mod:`serving.transport`; about 2 ms less CPU per request), with batching
  done by our :class:`~serving.api.ServingLoop`;

- our ``/predict`` route (validates in the API process, then uses LitServe's
  own request handler to reach a worker) instead of the generic one;
- our ``/health`` (JSON with model and registry blocks; 503 until workers are
  ready) instead of LitServe's plain-text one, plus ``/feedback``,
  ``/metrics`` and ``/admin/reload``;
- the request-id/body-limit/metrics middleware and uniform JSON errors;
- a lifespan that starts the refresher and the feedback-log writer inside the
  API server process (threads do not survive LitServe's fork, so they must
  start there) and flushes them on shutdown;
- supervision and drain (see :mod:`serving.supervision`): LitServe's monitor
  only watches inference workers and, when one dies, shuts down without
  waking the main thread; ours watches every child, and the shutdown order is
  API server first (drains in-flight requests), then the workers (each
  flushes its prediction log on a stop message). The main process closes its
  copy of the listening socket once the API servers have it, so the port closes
  with the API servers;
- several API server processes (``API_SERVERS``, LitServe's ``num_api_servers``),
  forked after the socket is bound, each with its own request and response
  pipe, its own inline model and its own refresher; what they must agree on
  is shared through files: the desired-model marker, the feedback ledger
  (SQLite), the metric files.

LitServe's gzip middleware is removed: responses are small for single rows,
and for 1,000-row batches compressing costs more CPU than the local network
saves.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing.managers import SyncManager
from typing import Any

import litserve as ls
from fastapi import FastAPI
from litserve.server import RegularRequestHandler
from litserve.utils import WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware

from serving.api import ModelAPI
from serving.config import ServingConfig
from serving.direct import DirectPredict
from serving.errors import install_error_handlers
from serving.http import ServingHttpProtocol
from serving.middleware import ServingMiddleware
from serving.routes import register_predict, register_routes
from serving.service import ServingContext
from serving.supervision import StopFlag, die_with_parent, exit_description
from serving.transport import PipeTransport, RequestChannel

log = logging.getLogger("serving")

GC_THRESHOLDS = (10_000, 50, 100)  # API process: a full collection every ~50M allocations instead of ~70k
MONITOR_INTERVAL = 0.25  # seconds between checks that every child is alive
WORKER_STOP_SECONDS = 10.0  # a worker flushes its log and exits within this after its stop message


class ChildProcessDied(RuntimeError):
    """The API server or an inference worker exited while the server was running."""


class ServingServer(ls.LitServer):
    """LitServer with the serving routes, middleware and lifecycle."""

    def __init__(self, lit_api: ModelAPI, context: ServingContext, config: ServingConfig) -> None:
        self.context = context  # read by the endpoint registration hooks that LitServer.__init__ calls
        self.config = config
        super().__init__(
            lit_api,
            accelerator="cpu",
            workers_per_device=config.workers,
            timeout=config.request_timeout if config.request_timeout > 0 else False,
        )
        self.uvicorn_graceful_timeout = config.drain_timeout
        self._main_pid = os.getpid()
        self._stopping = False
        self.stop_signal: int | None = None  # the signal that asked us to stop
        self.child_failure: str | None = None  # why the server stopped on its own
        self.app.user_middleware = [m for m in self.app.user_middleware if m.cls is not GZipMiddleware]
        self.app.add_middleware(
            ServingMiddleware,
            track=config.track,
            model=config.model_name,
            max_body_bytes=context.max_body_bytes,
            current_version=context.current_version,
            body_timeout=config.body_timeout,
            max_inflight_body_bytes=config.max_inflight_body_bytes,
        )
        install_error_handlers(self.app)
        context.workers_ready = self.workers_ready

    # -- LitServer hooks --------------------------------------------------------------------

    def _register_internal_endpoints(self) -> None:
        register_routes(self.app, self.context)

    def _register_api_endpoints(self, lit_api: ls.LitAPI, request_type: Any, response_type: Any) -> None:
        register_predict(self.app, self.context, RegularRequestHandler(lit_api, self))

    def _init_manager(self, num_api_servers: int) -> Any:
        """LitServe's manager state, but requests and responses bypass it (see :mod:`serving.transport`).

        Unlike LitServe, the manager process is spawned, not forked: a forked
        one would inherit the listening socket (bound before it starts) and
        keep the port open after the API server is gone.
        """
        ctx = mp.get_context("spawn")
        manager = SyncManager(ctx=ctx)
        manager.start(die_with_parent, (signal.SIGTERM, os.getpid()))  # a vanished main process ends it too
        self.transport_config.manager = manager
        self.transport_config.num_consumers = num_api_servers
        self.workers_setup_status = manager.dict()
        for lit_api in self.litapi_connector:
            self.litapi_request_queues[lit_api.api_path] = RequestChannel(ctx, num_api_servers)
        self._logger_connector.run(self)
        self._transport = PipeTransport(num_api_servers, ctx)
        # The main thread waits on this; a signal handler sets it (a manager Event would be a socket round trip).
        self._shutdown_event = StopFlag()
        return manager

    def _start_server(
        self, port: int, num_uvicorn_servers: int, log_level: str, sockets: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """Fork the API server, then close the main process's copy of the listening socket.

        Only the API server accepts connections: if it dies, the port closes
        instead of queueing connections nobody answers.
        """
        workers = super()._start_server(port, num_uvicorn_servers, log_level, sockets, *args, **kwargs)
        for sock in sockets or ():
            sock.close()
        return workers

    def _start_worker_monitoring(self, manager: Any, uvicorn_workers: dict[Any, Any]) -> None:
        """Watch the API server and every inference worker; the first one to exit stops the server."""

        def monitor() -> None:
            roles = {"API server": list(uvicorn_workers.values()), "state manager": [manager._process]}
            while not self._shutdown_event.wait(MONITOR_INTERVAL):
                children = [*roles.items(), ("inference worker", self.inference_workers)]
                for role, child in ((role, child) for role, group in children for child in group):
                    if child.is_alive() or self._shutdown_event.is_set():
                        continue
                    self.child_failure = f"the {role} (pid {child.pid}) exited ({exit_description(child.exitcode)})"
                    log.error("%s; stopping the server", self.child_failure)
                    self._shutdown_event.set()
                    return

        threading.Thread(target=monitor, name="serving-supervisor", daemon=True).start()

    def _perform_graceful_shutdown(
        self, manager: Any, uvicorn_workers: dict[Any, Any], shutdown_reason: str = "normal"
    ) -> None:
        """Drain: API server first (finishes in-flight requests), then workers (flush their logs), then the manager."""
        if self._stopping:
            return
        self._stopping = True
        self._shutdown_event.set()  # the monitor stops watching: from here on children exit on purpose
        log.info("draining (at most %.0f s for in-flight requests)", self.config.drain_timeout)
        self._transport.close(send_sentinel=False)
        for api_server in uvicorn_workers.values():
            if api_server.is_alive():
                api_server.terminate()  # uvicorn: stop accepting, finish in-flight requests, run lifespan shutdown
        for api_server in uvicorn_workers.values():
            api_server.join(self.config.drain_timeout + 5)
            if api_server.is_alive():
                log.warning("API server (pid %s) did not drain in time; killing it", api_server.pid)
                api_server.kill()
                api_server.join(5)
        self._stop_inference_workers()
        manager.shutdown()

    def _stop_inference_workers(self) -> None:
        """One stop message per worker (each flushes its log and exits); the stop marker and SIGTERM cover a
        worker that cannot read the pipe (another worker died holding its read lock)."""
        alive = [w for w in getattr(self, "inference_workers", []) or [] if w.is_alive()]
        if not alive:
            return
        self.context.layout.stop_marker.touch()
        for worker in alive:
            worker.terminate()
        for channel in self.litapi_request_queues.values():
            if isinstance(channel, RequestChannel):
                channel.stop_workers(len(alive))
        deadline = time.monotonic() + WORKER_STOP_SECONDS
        for worker in alive:
            worker.join(max(0.1, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("inference worker (pid %s) did not stop in time; killing it", worker.pid)
                worker.kill()
                worker.join(5)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        async with super().lifespan(app):
            # Everything imported so far (MLflow, pandas, ...) is permanent: keep the cyclic GC from walking it
            # again and again, which shows up as 100+ ms pauses in the API process's tail latency.
            gc.freeze()
            # Long-lived bookkeeping (the in-memory feedback ledger holds up to FEEDBACK_CACHE_SIZE request ids):
            # with the default thresholds a full collection walked it every few seconds under load (20-40 ms
            # pauses, the p99). Young generations are collected less often too (every 10,000 allocations: still
            # well under a millisecond).
            gc.set_threshold(*GC_THRESHOLDS)
            die_with_parent(signal.SIGTERM, self._main_pid)  # a vanished main process: drain and exit
            self.context.start()
            try:
                yield
            finally:
                self.context.stop()

    # -- helpers ----------------------------------------------------------------------------

    def workers_ready(self) -> bool:
        """True once every inference worker finished ``setup`` (LitServe's own readiness record)."""
        status = getattr(self, "workers_setup_status", None)
        if not status:
            return False
        try:
            values = list(status.values())
        except Exception:  # the manager is gone: shutting down
            return False
        return bool(values) and all(v == WorkerSetupStatus.READY for v in values)

    def request_stop(self, signum: int, frame: Any = None) -> None:
        """SIGTERM/SIGINT handler: drain and exit (in the main process; only sets a flag).

        The forked API server inherits this handler until uvicorn installs its
        own; a signal arriving in that window simply ends it.
        """
        if os.getpid() != self._main_pid:
            raise SystemExit(0)
        self.stop_signal = signum
        self._shutdown_event.set()

    def serve(self) -> None:
        """Run until SIGTERM/SIGINT or until a child process dies (then :class:`ChildProcessDied`).

        ``API_SERVERS`` API server processes share the listening socket (the kernel hands each
        connection to one of them); inference parallelism for larger requests comes from WORKERS.
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        self.run(
            host=self.config.host,
            port=self.config.port,
            num_api_servers=self.config.api_servers,
            log_level=self.config.log_level,
            generate_client_file=False,
            api_server_worker_type="process",
            access_log=False,
            loop="uvloop",
            http=ServingHttpProtocol.configured(
                header_timeout=self.config.header_timeout,
                max_header_bytes=self.config.max_header_bytes,
                direct=DirectPredict(self.context) if self.context.inline is not None else None,
            ),
            timeout_keep_alive=self.config.keep_alive_timeout,
        )
        if self.child_failure is not None:
            raise ChildProcessDied(self.child_failure)

    def stop_workers(self) -> None:
        """Stop inference workers LitServe started (used when start-up fails half-way)."""
        self._stop_inference_workers()

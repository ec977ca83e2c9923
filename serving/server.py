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
  start there) and flushes them on shutdown.

LitServe's gzip middleware is removed: responses are small for single rows,
and for 1,000-row batches compressing costs more CPU than the local network
saves.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import litserve as ls
from fastapi import FastAPI
from litserve.server import RegularRequestHandler
from litserve.utils import WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware

from serving.api import ModelAPI
from serving.config import ServingConfig
from serving.errors import install_error_handlers
from serving.middleware import ServingMiddleware
from serving.routes import register_predict, register_routes
from serving.service import ServingContext
from serving.transport import PipeTransport, RequestChannel

UVICORN_GRACEFUL_SECONDS = 10


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
        self.uvicorn_graceful_timeout = UVICORN_GRACEFUL_SECONDS
        self.app.user_middleware = [m for m in self.app.user_middleware if m.cls is not GZipMiddleware]
        self.app.add_middleware(
            ServingMiddleware,
            track=config.track,
            max_body_bytes=config.max_body_bytes,
            current_version=context.current_version,
        )
        install_error_handlers(self.app)
        context.workers_ready = self.workers_ready

    # -- LitServer hooks --------------------------------------------------------------------

    def _register_internal_endpoints(self) -> None:
        register_routes(self.app, self.context)

    def _register_api_endpoints(self, lit_api: ls.LitAPI, request_type: Any, response_type: Any) -> None:
        register_predict(self.app, self.context, RegularRequestHandler(lit_api, self))

    def _init_manager(self, num_api_servers: int) -> Any:
        """LitServe's manager, but requests and responses bypass it (see :mod:`serving.transport`)."""
        manager = super()._init_manager(num_api_servers)
        ctx = mp.get_context("spawn")
        for path in list(self.litapi_request_queues):
            self.litapi_request_queues[path] = RequestChannel(ctx)
        self._transport = PipeTransport(num_api_servers, ctx)
        return manager

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        async with super().lifespan(app):
            # Everything imported so far (MLflow, pandas, ...) is permanent: keep the cyclic GC from walking it
            # again and again, which shows up as 100+ ms pauses in the API process's tail latency.
            gc.freeze()
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

    def serve(self) -> None:
        """Run until SIGTERM/SIGINT (one API server process; inference parallelism comes from WORKERS)."""
        self.run(
            host=self.config.host,
            port=self.config.port,
            num_api_servers=1,
            log_level=self.config.log_level,
            generate_client_file=False,
            api_server_worker_type="process",
            access_log=False,
            loop="uvloop",
            http="httptools",
        )

    def stop_workers(self) -> None:
        """Terminate inference workers LitServe started (used when start-up fails half-way)."""
        for worker in getattr(self, "inference_workers", []) or []:
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=5)

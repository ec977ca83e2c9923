"""Small requests answered in the API process itself, without the hop to an inference worker.

For the tabular models this platform serves, an ONNX forest predicts a row in
a few microseconds; what a single-row request costs is the machinery around
it. Sending it to a LitServe worker costs two process hops (pickle, pipe,
wake-up, and back), about two thirds of the request's CPU. So a request of at
most ``INLINE_MAX_ROWS`` rows (64) is answered right here, on the event loop,
when the version runs on ONNX; larger requests and the sklearn fallback
(milliseconds per call) still go to the workers, where dynamic batching and
several processes pay off.

The inline model is a :class:`~serving.api.ModelAPI` like a worker's, loaded
the same way: the same desired-model marker, the same hash checks before the
file is opened (:func:`serving.runtime.load_runtime`), the same response body
and signed receipt, the same prediction-log line (written by this process's
own log writer to ``predictions-<track>-<pid>.jsonl``), the same metrics. It
hot-swaps like a worker too: a new version is loaded in a background thread
while the loaded one keeps answering, and the reference is switched on the
event loop between two requests (checked on every request and twice a second
when idle), so a request is answered entirely by one version.

If the inline model cannot be loaded the server still serves, through the
workers; ``/health`` reports the problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from serving.api import ModelAPI, PredictPayload, WorkerResult

log = logging.getLogger("serving")

MAINTAIN_SECONDS = 0.5  # an idle API process still swaps versions promptly


class InlinePredictor:
    """The API process's own model for requests of at most ``max_rows`` rows (ONNX only)."""

    def __init__(self, make_api: Callable[[], ModelAPI], max_rows: int) -> None:
        self.make_api = make_api
        self.max_rows = max_rows
        self.api: ModelAPI | None = None
        self.error: str | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Load the desired version (in the API process, on its event loop); failure leaves the workers serving."""
        if self.max_rows <= 0:
            return
        try:
            api = self.make_api()
            api.start_inline()
        except Exception as exc:
            log.exception("cannot load the model in the API process; every request goes to the workers")
            self.error = f"{type(exc).__name__}: {exc}"[:500]
            return
        self.api = api
        self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (unit use): swaps happen on requests only
            return
        self._timer = loop.call_later(MAINTAIN_SECONDS, self._tick)

    def _tick(self) -> None:
        if self.api is None:
            return
        try:
            self.api.maintain()
        except Exception:  # never let the timer die: the next request maintains too
            log.exception("inline model maintenance failed")
        self._schedule()

    def stop(self) -> None:
        """Flush the prediction log of the API process (lifespan shutdown, after the drain)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.api is not None:
            self.api.close()

    def accepts(self, rows: int) -> bool:
        """True when this process answers a request of ``rows`` rows itself."""
        api = self.api
        return api is not None and rows <= self.max_rows and api.active.runtime.kind == "onnx"

    def answer(self, payload: PredictPayload) -> WorkerResult:
        """Predict one validated request, exactly as a worker would (same body, log line and metrics)."""
        api = self.api
        assert api is not None
        api.maintain()
        return api.predict_one(payload)

    def status(self) -> dict[str, Any] | None:
        """What the API process serves (for ``/health``), or None when it answers nothing itself."""
        if self.api is None:
            return None if self.error is None else {"error": self.error}
        return dict(self.api.inline_status)

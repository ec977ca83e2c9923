"""``POST /predict`` answered from the HTTP protocol itself, for small complete requests the API process serves.

Even with the model in the API process (:mod:`serving.inline`), an ASGI
request pays for uvicorn's request cycle, an asyncio task, a scope, the
middleware chain (ours, FastAPI's and Starlette's) and the send/receive
message dictionaries: about as much CPU as the plain peer spends on the whole
request. :class:`~serving.http.ServingHttpProtocol` therefore holds back the
ASGI task of a ``POST /predict`` until the end of the read that carried its
head; when the whole body came with it, :meth:`DirectPredict.answer` answers
synchronously and the protocol writes the response bytes itself.

It answers only what it would answer exactly as the ASGI path does, and
returns None for everything else, which then takes the ordinary path (the
middleware and the route, with their limits and error answers):

- a body of at most 16 KiB (``PARSE_INLINE_BYTES``), within ``MAX_BODY_BYTES``,
  with a JSON ``Content-Type`` and no ``Transfer-Encoding``; a valid or absent
  ``X-Request-ID``;
- a request the inline model accepts (ONNX, at most ``INLINE_MAX_ROWS`` rows).
  Validation errors are answered here with the same status and body.

A body still arriving after that read goes to the ASGI path, whose
``BODY_TIMEOUT`` bounds it. Such a request is answered within the same event
loop callback that received it, so it never holds a body while others wait;
the in-flight body budget (``MAX_INFLIGHT_BODY_BYTES``) concerns bodies that
do. Responses carry the same headers (``content-type``, ``content-length``,
``x-request-id``, uvicorn's ``date`` and ``server``), and ``Connection:
close`` when the connection will close (HTTP/1.0, ``Connection: close``, a
draining server). Metrics, the prediction log and the receipts are those of
the ASGI path.
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus
from typing import Any

from ml_platform.monitoring.traffic import traffic_class
from serving import metrics
from serving.api import PredictPayload
from serving.errors import error_body
from serving.middleware import REQUEST_ID, TRAFFIC_HEADER, is_json_media_type, new_request_id
from serving.routes import PARSE_INLINE_BYTES
from serving.schema import RequestError
from serving.service import ServingContext

log = logging.getLogger("serving")

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class DirectPredict:
    """Answers a complete small ``POST /predict`` synchronously, or returns None to leave it to the ASGI app."""

    def __init__(self, context: ServingContext) -> None:
        self.ctx = context
        self.max_body_bytes = min(context.max_body_bytes, PARSE_INLINE_BYTES)
        self.labels_prefix = (context.model, "/predict")

    def answer(
        self, scope: dict[str, Any], raw_body: bytes | bytearray, keep_alive: bool, default_headers: Any
    ) -> bytes | None:
        """The full HTTP response for this request, or None when the ASGI path must answer it."""
        inline = self.ctx.inline
        if inline is None or inline.api is None or len(raw_body) > self.max_body_bytes:
            return None
        body = bytes(raw_body)
        request_id = content_type = traffic = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
                if REQUEST_ID.fullmatch(request_id) is None:
                    return None  # the middleware answers 400
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"transfer-encoding":
                return None
            elif name == TRAFFIC_HEADER:
                traffic = traffic_class(value.decode("latin-1"))
        if not is_json_media_type(content_type):
            return None  # 415
        started = time.perf_counter()
        received_at = time.time()
        request_id = request_id or new_request_id()
        ctx = self.ctx
        try:
            rows = ctx.schema.parse_predict(body)
        except RequestError as exc:
            status, answer, version = exc.status, error_body(exc.error, exc.detail), ctx.current_version()
        else:
            if not inline.accepts(len(rows)):
                return None  # to a worker, through LitServe
            try:
                result = inline.answer(PredictPayload(request_id, rows, received_at, traffic))
            except Exception as exc:  # as the app's error handler would: a JSON 500, never a traceback
                log.exception("POST /predict failed")
                status, answer, version = 500, error_body("internal error", type(exc).__name__), ctx.current_version()
            else:
                status, answer, version = result.status, result.body, result.model_version
                if status == 200 and result.class_index is not None:
                    ctx.record_prediction(request_id, version, result.class_index)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error"))]
        for name, value in default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n%s\r\n"
            % (len(answer), request_id.encode("latin-1"), b"" if keep_alive else b"connection: close\r\n")
        )
        model, endpoint = self.labels_prefix
        track = ctx.track
        metrics.REQUESTS_PENDING.inc((model, endpoint, str(status), version, track))
        metrics.REQUEST_DURATION_PENDING.observe((model, endpoint, version, track), time.perf_counter() - started)
        return b"".join(head) + answer

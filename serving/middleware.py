"""The API process's outermost layer: request ids, body limits, body deadline and request metrics.

A plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs a task and
a copy per request). For every HTTP request it

- accepts a valid ``X-Request-ID`` (at most 128 of ``[A-Za-z0-9._-]``) or
  generates one (uuid4 hex), stores it in ``scope["state"]`` and echoes it on
  the response, errors included; an invalid one is refused with 400;
- for ``POST /predict`` and ``POST /feedback`` refuses a non-JSON content type
  (415) and a body over ``MAX_BODY_BYTES`` (413: from ``Content-Length``
  before reading anything, or while reading a chunked body), a body not fully
  received within ``BODY_TIMEOUT`` seconds (408), and a body that would take
  the bytes buffered by all requests in flight over
  ``MAX_INFLIGHT_BODY_BYTES`` (503 with ``Retry-After``); the budget is held
  until the request is answered, since parsing is what costs memory. Then it
  replays the body to the route. Refusals close the connection (the unread
  rest of the body must not be parsed as a next request);
- answers ``POST /predict`` itself, through the endpoint :func:`serving.routes.make_predict`
  builds (FastAPI's routing, dependency solving and response objects cost a
  third of a single-row request; the route stays registered for OpenAPI);
- counts the request in ``ml_serving_requests_total`` and times it in
  ``ml_serving_request_duration_seconds``, whatever its outcome (4xx included;
  unknown paths are counted as ``endpoint="other"`` to bound cardinality), in
  this process's pending counts (:class:`serving.metrics.PendingCounter`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ml_platform.monitoring.traffic import TRAFFIC_HEADER as TRAFFIC_HEADER_NAME
from ml_platform.monitoring.traffic import traffic_class
from serving import metrics
from serving.errors import JSON, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("serving")

JSON_BYTES = JSON.encode()
TRAFFIC_HEADER = TRAFFIC_HEADER_NAME.lower().encode()  # "smoke": the platform's own probes, tagged in the log
KNOWN_ENDPOINTS = frozenset({"/predict", "/feedback", "/health", "/metrics", "/admin/reload"})
JSON_BODY_ENDPOINTS = frozenset({"/predict", "/feedback"})
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class BodyError(Exception):
    """The body cannot be accepted: status, summary, detail (and extra response headers)."""

    def __init__(self, status: int, error: str, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version nibble and the variant bits
UUID4_SET = (4 << 76) | (0x8000 << 48)  # version 4, RFC 4122 variant


def new_request_id() -> str:
    """A random uuid4 as 32 hex digits.

    ``uuid.uuid4()`` reads ``os.urandom`` (a syscall) every time; the ``random``
    module is seeded from it at start and re-seeded in forked children, and
    128 random bits make collisions as unlikely.
    """
    return "%032x" % (random.getrandbits(128) & UUID4_CLEAR | UUID4_SET)  # as uuid.UUID(int=..., version=4).hex


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def is_json_media_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _send_error(
    send: Send, status: int, error: str, detail: Any, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = error_body(error, detail)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


CLOSE = ((b"connection", b"close"),)


class ServingMiddleware:
    """Request ids, JSON body limits and request metrics for every HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        track: str,
        model: str,
        max_body_bytes: int,
        current_version: Callable[[], str],
        body_timeout: float = 30.0,
        max_inflight_body_bytes: int | None = None,
        predict: Callable[[dict[str, Any], bytes], Awaitable[tuple[int, bytes]]] | None = None,
    ) -> None:
        self.app = app
        self.track = track
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.current_version = current_version
        self.body_timeout = body_timeout
        self.max_inflight_body_bytes = max(max_inflight_body_bytes or 4 * max_body_bytes, max_body_bytes)
        self.inflight_body_bytes = 0  # over all requests being read or processed (event-loop thread only)
        self.predict = predict  # POST /predict answered here, without the FastAPI route (see routes.make_predict)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["received_at"] = time.time()
        offered = _header(scope, b"x-request-id")
        valid_id = offered is None or REQUEST_ID.fullmatch(offered) is not None
        request_id = offered if offered and valid_id else new_request_id()
        state["request_id"] = request_id
        traffic = traffic_class(_header(scope, TRAFFIC_HEADER))
        if traffic is not None:
            state["traffic"] = traffic
        id_header = (b"x-request-id", request_id.encode())
        status = 500  # if the app dies before answering, the error middleware answers 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if not valid_id:
                await _send_error(
                    send_with_id, 400, "invalid X-Request-ID", "use 1 to 128 characters of A-Z a-z 0-9 . _ -"
                )
                return
            if scope["method"] == "POST" and scope["path"] in JSON_BODY_ENDPOINTS:
                try:
                    async with asyncio.timeout(self.body_timeout):
                        body = await self._read_json_body(scope, receive, state)
                except TimeoutError:
                    detail = f"the body was not received within {self.body_timeout:g} s (BODY_TIMEOUT)"
                    await _send_error(send_with_id, 408, "request timeout", detail, CLOSE)
                    return
                except BodyError as exc:
                    await _send_error(send_with_id, exc.status, exc.error, exc.detail, exc.headers)
                    return
                if body is None:  # client went away
                    return
                if self.predict is not None and scope["path"] == "/predict":
                    await self._answer_predict(state, body, send_with_id)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_id)
        finally:
            self.inflight_body_bytes -= state.pop("body_budget", 0)
            path = scope["path"]
            endpoint = path if path in KNOWN_ENDPOINTS else "other"
            version = state.get("model_version") or self.current_version()
            labels = (self.model, endpoint, version, self.track)
            metrics.REQUESTS_PENDING.inc((self.model, endpoint, str(status), version, self.track))
            metrics.REQUEST_DURATION_PENDING.observe(labels, time.perf_counter() - started)

    async def _answer_predict(self, state: dict[str, Any], body: bytes, send: Send) -> None:
        assert self.predict is not None
        try:
            status, answer = await self.predict(state, body)
        except Exception as exc:  # as the app's error handler would: a JSON 500, never a traceback
            log.exception("POST /predict failed")
            status, answer = 500, error_body("internal error", type(exc).__name__)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", JSON_BYTES), (b"content-length", str(len(answer)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def _read_json_body(self, scope: Scope, receive: Receive, state: dict[str, Any]) -> bytes | None:
        content_type = _header(scope, b"content-type")
        if not is_json_media_type(content_type):
            raise BodyError(
                415, "unsupported media type", f"send Content-Type: application/json (got {content_type!r})", CLOSE
            )
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise BodyError(400, "invalid Content-Length", declared[:40], CLOSE)
            if int(declared) > self.max_body_bytes:
                raise self._too_large()
            self._reserve(state, int(declared))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            if declared is None:
                self._reserve(state, size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> BodyError:
        return BodyError(413, "request body too large", f"at most {self.max_body_bytes} bytes (MAX_BODY_BYTES)", CLOSE)

    def _reserve(self, state: dict[str, Any], size: int) -> None:
        """Count ``size`` body bytes for this request against the in-flight budget (503 beyond it)."""
        held = state.get("body_budget", 0)
        if size <= held:
            return
        if self.inflight_body_bytes + size - held > self.max_inflight_body_bytes:
            raise BodyError(
                503,
                "server busy",
                f"too many request bodies in flight (MAX_INFLIGHT_BODY_BYTES={self.max_inflight_body_bytes}); retry",
                ((b"retry-after", b"1"), *CLOSE),
            )
        self.inflight_body_bytes += size - held
        state["body_budget"] = size


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

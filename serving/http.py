"""The HTTP/1.1 connection protocol of the API server: uvicorn's httptools protocol with hard limits.

Stock uvicorn (0.54) bounds only the idle time between two requests of a
keep-alive connection (``timeout_keep_alive``). This subclass adds what a
public port needs:

- **header deadline**: a request's head (request line and headers) must arrive
  within ``HEADER_TIMEOUT`` seconds of the connection opening or of its first
  byte; otherwise the client gets ``408`` and the connection closes (a client
  that connects and sends nothing, or trickles headers, holds nothing for long);
- **header size**: a head over ``MAX_HEADER_BYTES`` gets ``431`` and the
  connection closes (httptools itself has no limit);
- **JSON parser errors**: a request httptools cannot parse gets the documented
  ``{"error": ..., "detail": ...}`` body instead of uvicorn's plain text;
- **direct answers**: the ASGI task of a ``POST /predict`` is held back until the end of the read that
  carried its head; if the whole body came with it, :class:`serving.direct.DirectPredict` may answer it
  right here (small ONNX requests, see that module), else the task starts as usual;
- **graceful drain**: on shutdown uvicorn closes idle keep-alive connections at
  once, resetting a request that is already on the wire. Here an idle
  connection gets a short grace period, a request that arrives in it (or is
  half received) is answered with ``Connection: close``, and only then the
  connection closes.

The body deadline and body size limits live in :mod:`serving.middleware`
(the application sees the body). The uvicorn internals this relies on are
pinned by ``ml_platform_tests/serving/test_litserve_contract.py``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.errors import error_body

log = logging.getLogger("serving.http")

SHUTDOWN_GRACE_SECONDS = 0.5  # an idle connection's grace at shutdown for a request already in flight to us


class DirectAnswer(Protocol):
    """See :class:`serving.direct.DirectPredict`."""

    def answer(self, scope: Any, body: bytes | bytearray, keep_alive: bool, default_headers: Any) -> bytes | None: ...


def _response(status: int, reason: str, error: str, detail: str) -> bytes:
    body = error_body(error, detail)
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ServingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus header deadline, header size limit, JSON 400s and a gentler drain."""

    header_timeout: float = 10.0
    max_header_bytes: int = 32 * 1024
    direct: DirectAnswer | None = None  # answers small POST /predict requests without ASGI (serving.direct)

    @classmethod
    def configured(
        cls, *, header_timeout: float, max_header_bytes: int, direct: DirectAnswer | None = None
    ) -> type[ServingHttpProtocol]:
        """A subclass with these limits (uvicorn instantiates the class it is given once per connection)."""
        attributes = {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes, "direct": direct}
        return type(cls.__name__, (cls,), attributes)

    # -- connection lifecycle -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._reading_head = True
        self._draining = False
        self._may_defer = False  # True while uvicorn starts the ASGI task of a request whose head just arrived
        self._deferred: tuple[Any, Any] | None = None  # (cycle, app) of a POST /predict held back for `direct`
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        deferred = self._deferred
        if deferred is not None:  # the body did not come with the head: the ASGI path (with BODY_TIMEOUT) takes it
            self._deferred = None
            if not self.transport.is_closing():
                super()._start_asgi_task(*deferred)
        if self._reading_head and self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
            detail = f"the request line and headers must fit in {self.max_header_bytes} bytes (MAX_HEADER_BYTES)"
            self._refuse(431, "Request Header Fields Too Large", "request headers too large", detail)

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._parsed_head = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._parsed_head += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_head += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        if self._parsed_head > self.max_header_bytes:  # arrived in one read: refuse instead of starting it
            detail = f"the request line and headers must fit in {self.max_header_bytes} bytes (MAX_HEADER_BYTES)"
            self._refuse(431, "Request Header Fields Too Large", "request headers too large", detail)
            return
        self._may_defer = self.direct is not None and not self.expect_100_continue
        try:
            super().on_headers_complete()
        finally:
            self._may_defer = False
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answer it, then close: the server is shutting down

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        scope = cycle.scope
        if self._may_defer and scope["method"] == "POST" and scope["path"] == "/predict":
            self._deferred = (cycle, app)  # answered in on_message_complete if the body is complete by then
            return
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():  # refused (408/431): the rest of the request is ignored
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.transport.is_closing():
            return
        super().on_message_complete()
        deferred = self._deferred
        if deferred is None or deferred[0] is not self.cycle:
            return
        self._deferred = None
        cycle, app = deferred
        assert self.direct is not None
        try:
            response = self.direct.answer(cycle.scope, cycle.body, cycle.keep_alive, cycle.default_headers)
        except Exception:  # a bug in the direct path must not break the connection: the ASGI path answers
            log.exception("direct /predict path failed; answering through the application")
            response = None
        if response is None:
            super()._start_asgi_task(cycle, app)
            return
        cycle.response_started = cycle.response_complete = True
        self.transport.write(response)
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()  # keep-alive timer, or the next pipelined request

    # -- errors -------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse: the JSON error body, then close."""
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        self.transport.write(_response(400, "Bad Request", "malformed HTTP request", msg))
        self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._reading_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request behind one still running: the running one decides
        detail = f"the request line and headers were not received within {self.header_timeout:g} s (HEADER_TIMEOUT)"
        self._refuse(408, "Request Timeout", "request timeout", detail)

    def _refuse(self, status: int, reason: str, error: str, detail: str) -> None:
        log.debug("closing %s: %s", self.client, detail)
        self._cancel_head_timer()
        self.transport.write(_response(status, reason, error, detail))
        self.transport.close()

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    # -- shutdown -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful shutdown: in-flight requests finish; idle connections close after a short grace."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self.loop.call_later(SHUTDOWN_GRACE_SECONDS, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request arrived meanwhile: it is answered with Connection: close
        if self._reading_head and self._head_bytes:
            return  # a request is half received: the header deadline bounds it
        self.transport.close()

"""HTTP routes of the API process: /predict, /feedback, /health, /metrics, /admin/reload.

``/predict`` validates in this process and hands LitServe only well-formed
payloads; the worker returns the finished body, and this process records the
prediction for ``/feedback`` and metrics before answering. Request bodies are
read raw (validated by :mod:`serving.schema`), so their JSON schemas are added
to the OpenAPI document explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from serving.api import PredictPayload
from serving.encoding import dumps
from serving.errors import JSON, error_body, json_error
from serving.feedback import FeedbackSigner
from serving.metrics import render_metrics
from serving.schema import REQUEST_ID_PATTERN, RequestError
from serving.service import ServingContext

log = logging.getLogger("serving")

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {}},
    "required": ["error"],
}
_REQUEST_ID_PARAMETER = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Your id for this request (echoed); one is generated when absent.",
    "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
}


PredictEndpoint = Callable[[Any, bytes], Awaitable[tuple[int, bytes]]]

PARSE_INLINE_BYTES = 16 * 1024  # bodies up to this size (~700 rows) parse on the event loop (a few ms at most)
TRIM_AFTER_BYTES = 1024 * 1024  # bodies this large (~30,000 iris rows' worth of parsing) give memory back after
TRANSPORT_ERRORS = (408, 413, 415, 503)  # answered by the middleware before a body route runs


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Parsing a multi-megabyte body allocates many small objects; glibc keeps
    their pages once freed, and the API process would otherwise stay at its
    high-water mark after one large (even refused) request.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def parse_large(parse: Callable[[bytes], Any], body: bytes) -> Any:
    """``parse(body)`` in a worker thread, then (for a body over ``TRIM_AFTER_BYTES``) hand the freed parse memory
    back to the OS. ``malloc_trim`` walks the whole heap: after every 1,000-row request it was a third of the API
    process's CPU, while bodies that size never move the high-water mark."""
    large = len(body) > TRIM_AFTER_BYTES
    try:
        return parse(body)
    finally:
        del body
        if large:
            release_free_memory()


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": "error", "content": {JSON: {"schema": _ERROR_SCHEMA}}} for code in codes}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def _is_admin(request: Request, token: str | None) -> bool:
    """True when the request carries the admin token (``Authorization: Bearer`` or ``X-Admin-Token``)."""
    if not token:
        return False
    offered = request.headers.get("x-admin-token")
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        offered = credentials.strip()
    if not offered:
        return False
    return hmac.compare_digest(offered.encode(), token.encode())


def _json(payload: Any, status: int = 200) -> Response:
    return Response(dumps(payload), status_code=status, media_type=JSON)


def make_predict(ctx: ServingContext, handler: Any) -> PredictEndpoint:
    """``/predict`` as ``await answer(state, body) -> (status, body)``: validate, predict, record.

    Called by :class:`~serving.middleware.ServingMiddleware` straight from the
    ASGI layer (no FastAPI routing, dependency solving or response object: a
    third of a single-row request's CPU), and by the FastAPI route registered
    below, which also documents the endpoint in OpenAPI. Small ONNX requests are
    answered in this process (:mod:`serving.inline`); the rest goes through
    LitServe's request handler to a worker.
    """

    async def answer(state: Any, body: bytes) -> tuple[int, bytes]:
        try:
            if len(body) <= PARSE_INLINE_BYTES:
                rows = ctx.schema.parse_predict(body)
            else:  # big bodies parse in a thread: the event loop keeps answering other requests meanwhile
                rows = await asyncio.to_thread(parse_large, ctx.schema.parse_predict, body)
        except RequestError as exc:
            return exc.status, error_body(exc.error, exc.detail)
        payload = PredictPayload(state["request_id"], rows, state["received_at"], state.get("traffic"))
        inline = ctx.inline
        if inline is not None and inline.accepts(len(rows)):
            result = inline.answer(payload)  # small request, ONNX: no hop to a worker
        else:
            result = await handler.handle_request(payload, PredictPayload)
        state["model_version"] = result.model_version
        if result.status == 200 and result.class_index is not None:
            ctx.record_prediction(payload.request_id, result.model_version, result.class_index)
        return result.status, result.body

    return answer


def register_predict(app: FastAPI, ctx: ServingContext, handler: Any) -> PredictEndpoint:
    """``POST /predict`` in front of LitServe's request handler (queue -> worker -> response).

    Returns the endpoint for the middleware's direct path; the route serves
    only when the middleware is not in front (and documents the endpoint).
    """
    answer = make_predict(ctx, handler)

    async def predict(request: Request) -> Response:
        status, body = await answer(request.scope.setdefault("state", {}), await request.body())
        return Response(body, status_code=status, media_type=JSON)

    app.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        summary="Predict classes for one or more rows",
        response_class=Response,
        openapi_extra={
            "requestBody": _json_body(ctx.schema.predict_json_schema()),
            "parameters": [_REQUEST_ID_PARAMETER],
            "responses": {"200": {"description": "predictions"}, **_errors(400, 422, *TRANSPORT_ERRORS)},
        },
    )
    return answer


def register_routes(app: FastAPI, ctx: ServingContext) -> None:
    """``/feedback``, ``/health``, ``/metrics`` and ``/admin/reload``."""

    signer = FeedbackSigner(ctx.config.feedback_signing_key)
    if ctx.config.feedback_key_source == "generated":
        log.warning(
            "FEEDBACK_SIGNING_KEY is not set: feedback receipts are signed with a random key of this server, so "
            "they verify only here and not after a restart; configure one key per deployment"
        )

    async def feedback(request: Request) -> Response:
        """Score ground truth, but only with the receipt of the prediction it labels (never twice per row)."""
        try:
            parsed = ctx.schema.parse_feedback(await request.body())  # 401 without a receipt, 403 malformed
            receipt = signer.open(parsed.token, ctx.model, ctx.refresher.current.name, parsed.request_id)
            if receipt is None:  # self-contained: verifiable on any replica with the deployment's key
                raise RequestError(
                    403, "invalid feedback token", "the token is not a receipt of this deployment for this request id"
                )
            return _json(ctx.apply_feedback(parsed, receipt))
        except RequestError as exc:
            return json_error(exc.status, exc.error, exc.detail)

    async def health(request: Request) -> Response:
        status, body = ctx.health(detailed=_is_admin(request, ctx.config.admin_api_token))
        return _json(body, status)

    async def metrics_endpoint() -> Response:
        body, content_type = render_metrics()
        return Response(body, media_type=content_type)

    async def reload(request: Request) -> Response:
        token = ctx.config.admin_api_token
        if not token:
            return json_error(403, "admin API disabled", "set ADMIN_API_TOKEN to enable /admin/reload")
        if not _is_admin(request, token):
            return json_error(
                401, "unauthorized", "send Authorization: Bearer <ADMIN_API_TOKEN>", {"WWW-Authenticate": "Bearer"}
            )
        outcome = await asyncio.to_thread(ctx.refresher.refresh_now)
        body = {
            "changed": outcome.changed,
            "previous_version": outcome.previous_version,
            "version": outcome.version,
            "error": outcome.error,
        }
        return _json(body, 503 if outcome.error else 200)

    app.add_api_route(
        "/feedback",
        feedback,
        methods=["POST"],
        summary="Report ground truth for an earlier prediction",
        response_class=Response,
        openapi_extra={
            "requestBody": _json_body(ctx.schema.feedback_json_schema()),
            "responses": {
                "200": {"description": "feedback recorded"},
                **_errors(400, 401, 403, 404, 409, 422, *TRANSPORT_ERRORS),
            },
        },
    )
    app.add_api_route(
        "/health",
        health,
        methods=["GET"],
        summary="Readiness, served model and registry status",
        response_class=Response,
        openapi_extra={"responses": {"200": {"description": "ok or degraded"}, "503": {"description": "unavailable"}}},
    )
    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        summary="Prometheus metrics of all processes",
        response_class=Response,
    )
    app.add_api_route(
        "/admin/reload",
        reload,
        methods=["POST"],
        summary="Re-resolve the model URI now (needs ADMIN_API_TOKEN)",
        response_class=Response,
        openapi_extra={
            "parameters": [{"name": "Authorization", "in": "header", "required": False, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "reloaded"}, **_errors(401, 403, 503)},
        },
    )

"""Uniform JSON errors: every 4xx/5xx body is ``{"error": <summary>, "detail": <specifics>}``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from serving.encoding import dumps

JSON = "application/json"


def error_body(error: str, detail: Any = None) -> bytes:
    return dumps({"error": error, "detail": detail})


def json_error(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(error, detail), status_code=status, media_type=JSON, headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


async def _http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    return json_error(exc.status_code, _phrase(exc.status_code), exc.detail, getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return json_error(
        422, "invalid request", [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    return json_error(500, "internal error", type(exc).__name__)


def install_error_handlers(app: FastAPI) -> None:
    """Route FastAPI/Starlette errors (404, 405, worker HTTPExceptions, ...) through :func:`json_error`."""
    app.add_exception_handler(StarletteHTTPException, _http_exception)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)

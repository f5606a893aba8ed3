"""The one place errors become responses: the OpenAI error body with the right status."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway.errors import HearthError, InternalError, InvalidRequest, MethodNotAllowed, NotFound

log = logging.getLogger(__name__)


def error_response(error: HearthError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


async def _hearth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HearthError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return error_response(InvalidRequest(f"Invalid request: {first.get('msg', 'bad input')}.", param=param))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: HearthError
    if exc.status_code == 404:
        error = NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.")
    else:
        error = InvalidRequest(str(exc.detail))
        error.status = exc.status_code  # type: ignore[misc]
    return error_response(error)


def internal_error_response(request: Request) -> Response:
    """500 without details for the client; the traceback goes to the log with the request id."""
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.exception("unhandled error", extra={"request_id": request_id})
    return error_response(
        InternalError(f"The gateway hit an internal error. Quote request id {request_id} when reporting it.")
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    return internal_error_response(request)


def install(app: FastAPI) -> None:
    app.add_exception_handler(HearthError, _hearth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

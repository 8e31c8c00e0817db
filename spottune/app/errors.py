"""One JSON error body for every failure: ``{"error": {"code": "...", "message": "..."}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A failure the client can fix; the message says what to do."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers
        if code is not None:
            self.code = code


class NotFound(ApiError):
    status_code, code = 404, "not_found"


class Invalid(ApiError):
    status_code, code = 422, "invalid"


class Conflict(ApiError):
    status_code, code = 409, "conflict"


class TooLarge(ApiError):
    status_code, code = 413, "too_large"


class TooManyJobs(ApiError):
    status_code, code = 429, "too_many_jobs"


class Unauthorized(ApiError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
}


_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's own detail


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "request"


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") in _RANGE_ERRORS and "input" in err:
            msg += f", got {err['input']!r}"
        problems.append(f"{_location(tuple(err.get('loc', ())))}: {msg}")
    return "; ".join(problems[:10]) + " (fix these fields and retry)"


def _validation_code(exc: RequestValidationError) -> str:
    """invalid_options when only a job's options are at fault, else validation_error."""
    locations = [tuple(err.get("loc", ())) for err in exc.errors()]
    if locations and all(loc[:2] == ("body", "options") for loc in locations):
        return "invalid_options"
    return "validation_error"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and message == _PARSE_ERROR:
        message = (
            "the request body cannot be parsed: send UTF-8 JSON (Content-Type: application/json)"
            " or a well-formed multipart form for uploads"
        )
    return error_response(exc.status_code, code, message, getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, _validation_code(exc), _validation_message(exc))


def database_unavailable_response() -> JSONResponse:
    return error_response(
        503,
        "database_unavailable",
        "the database is unreachable; retry in a moment (operators: check SPOTTUNE_DATABASE_URL)",
        {"Retry-After": "5"},
    )


async def _database_down(_: Request, exc: Exception) -> JSONResponse:
    logger.warning("request failed, database unavailable: %s", type(exc).__name__)
    return database_unavailable_response()


async def _pool_exhausted(_: Request, exc: Exception) -> JSONResponse:
    logger.warning("request refused: no database connection free in time")
    return error_response(
        503,
        "busy",
        "the service is overloaded (no database connection free); retry in a moment",
        {"Retry-After": "2"},
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error")
    return error_response(500, "internal_error", "an internal error occurred; retry or report it")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(InterfaceError, _database_down)
    app.add_exception_handler(PoolTimeout, _pool_exhausted)
    app.add_exception_handler(Exception, _unexpected)

"""Shapes shared by every resource: pages and errors."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, ConfigDict

T = TypeVar("T")
MAX_PAGE = 200

LimitQuery = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")]
MAX_OFFSET = 1_000_000_000  # beyond any real listing; keeps the value inside a 64-bit integer
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class OrmModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


Responses = dict[int | str, dict[str, object]]


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: Responses = {
    400: _error("the body cannot be parsed (not UTF-8 JSON or a broken multipart form)"),
    401: _error("missing, malformed, unknown or revoked API key"),
    404: _error("no such object for this clinic"),
    422: _error("invalid request; the message says what to fix"),
    503: _error("the database is unreachable; retry after Retry-After seconds"),
}
IDEMPOTENCY_RESPONSES: Responses = {
    409: _error("the Idempotency-Key was used for a different request, or is in use right now"),
}
UPLOAD_RESPONSES: Responses = {
    413: _error("the upload exceeds the size limit or the clinic's storage quota"),
    **IDEMPOTENCY_RESPONSES,
}
JOB_RESPONSES: Responses = {
    429: _error("the clinic already has its maximum of queued and running jobs"),
    **IDEMPOTENCY_RESPONSES,
}
CONFLICT_RESPONSES: Responses = {
    409: _error("the object is used by a queued or running job, or the job already finished"),
}
POLL_RESPONSES: Responses = {
    304: {"description": "unchanged since the ETag sent in If-None-Match (no body)"},
}

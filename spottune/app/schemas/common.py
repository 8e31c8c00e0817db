"""Shapes shared by every resource: pages and errors."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, ConfigDict

T = TypeVar("T")
MAX_PAGE = 200

LimitQuery = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")]
OffsetQuery = Annotated[int, Query(ge=0, description="rows to skip")]


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


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "missing, malformed, unknown or revoked API key"},
    404: {"model": ErrorBody, "description": "no such object for this clinic"},
    422: {"model": ErrorBody, "description": "invalid request; the message says what to fix"},
}

"""Query helpers shared by the repositories and the worker: pages, and rows a clinic owns."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from spottune.core.db import Base

T = TypeVar("T", bound=Base)


def paginate(session: Session, stmt: Select[Any], limit: int, offset: int) -> tuple[list[Any], int]:
    """One page of ``stmt`` and the total number of rows it matches."""
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    items = list(session.scalars(stmt.limit(limit).offset(offset)))
    return items, int(total or 0)


def get_owned(
    session: Session, model: type[T], clinic_id: uuid.UUID, obj_id: uuid.UUID
) -> T | None:
    """The row if it belongs to the clinic (another clinic's row reads as missing)."""
    row = session.get(model, obj_id)
    if row is None or getattr(row, "clinic_id", None) != clinic_id:
        return None
    return row

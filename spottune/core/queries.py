"""Query helpers shared by the repositories and the worker: pages, rows a clinic owns, and rows
loaded together by id."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

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


def by_ids(
    session: Session, key: InstrumentedAttribute[uuid.UUID], ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, Any]:
    """The rows of ``key``'s table whose ``key`` is in ``ids``, by that key: one query for a
    whole page of rows (none for no ids), instead of one per row."""
    if not ids:
        return {}
    entity = key.class_
    rows = session.scalars(select(entity).where(key.in_(set(ids))))
    return {getattr(row, key.key): row for row in rows}

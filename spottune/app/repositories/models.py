"""Queries on uploaded and adapted models."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from spottune.core.models import Model
from spottune.core.queries import get_owned, paginate


def get(session: Session, clinic_id: uuid.UUID, model_id: uuid.UUID) -> Model | None:
    return get_owned(session, Model, clinic_id, model_id)


def page(
    session: Session, clinic_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[Model], int]:
    stmt = (
        select(Model)
        .where(Model.clinic_id == clinic_id)
        .order_by(Model.created_at.desc(), Model.id)
    )
    return paginate(session, stmt, limit, offset)

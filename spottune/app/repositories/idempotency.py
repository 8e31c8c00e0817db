"""Queries on idempotency keys (one row per clinic and key)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from spottune.core.models import IdempotencyKey


def find(session: Session, clinic_id: uuid.UUID, key: str) -> IdempotencyKey | None:
    stmt = select(IdempotencyKey).where(
        IdempotencyKey.clinic_id == clinic_id, IdempotencyKey.key == key
    )
    return session.scalars(stmt).one_or_none()

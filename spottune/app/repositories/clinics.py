"""Clinics and their API keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from spottune.core.models import ApiKey, Clinic


def keys_with_prefix(session: Session, prefix: str) -> list[tuple[ApiKey, Clinic]]:
    """Unrevoked keys sharing ``prefix``, with their clinic."""
    stmt = (
        select(ApiKey, Clinic)
        .join(Clinic, Clinic.id == ApiKey.clinic_id)
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    )
    return [(key, clinic) for key, clinic in session.execute(stmt).tuples()]


def clinic_by_name(session: Session, name: str) -> Clinic | None:
    return session.scalars(select(Clinic).where(Clinic.name == name)).one_or_none()


def lock_clinic(session: Session, clinic_id: uuid.UUID) -> None:
    """Serialise quota checks of one clinic until the transaction ends.

    Postgres: a row lock. SQLite ignores FOR UPDATE and has no row locks, so two uploads would
    both read the same total and both pass; a no-op write takes the database's write lock now
    instead (it waits for a concurrent writer, then reads the total that writer committed).
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Clinic).where(Clinic.id == clinic_id).values(name=Clinic.name))
        return
    session.execute(select(Clinic.id).where(Clinic.id == clinic_id).with_for_update())


def revoke_keys(
    session: Session, *, prefix: str | None = None, clinic_id: uuid.UUID | None = None, at: datetime
) -> int:
    """Revoke active keys matching ``prefix`` or of ``clinic_id``; returns the count."""
    stmt = update(ApiKey).where(ApiKey.revoked_at.is_(None))
    if prefix is not None:
        stmt = stmt.where(ApiKey.prefix == prefix)
    if clinic_id is not None:
        stmt = stmt.where(ApiKey.clinic_id == clinic_id)
    return int(session.execute(stmt.values(revoked_at=at)).rowcount or 0)  # type: ignore[attr-defined]

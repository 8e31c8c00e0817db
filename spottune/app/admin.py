"""Operator functions behind ``spottune admin create-clinic`` / ``revoke-key`` / ``purge-clinic``.

The typer commands live in ``spottune.cli.service_commands``; these are plain functions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from spottune.app.repositories import clinics as clinic_repo
from spottune.app.security import PREFIX_CHARS, NewKey, generate_key
from spottune.core.db import get_session_factory
from spottune.core.models import ApiKey, Clinic, utcnow
from spottune.core.settings import Settings


class AdminError(ValueError):
    """An operator mistake (duplicate clinic, unknown key); the message says what to do."""


@dataclass(frozen=True)
class ClinicKey:
    clinic_id: uuid.UUID
    name: str
    key: str  # print once; only its hash is stored
    prefix: str


def _factory(
    session_factory: sessionmaker[Session] | None, settings: Settings | None
) -> sessionmaker[Session]:
    return session_factory or get_session_factory(settings)


def create_clinic(
    name: str,
    *,
    session_factory: sessionmaker[Session] | None = None,
    settings: Settings | None = None,
) -> ClinicKey:
    """Create clinic ``name`` with a fresh API key (returned in clear, stored hashed)."""
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise AdminError("clinic name must have 1 to 200 characters")
    with _factory(session_factory, settings)() as session:
        if clinic_repo.clinic_by_name(session, name) is not None:
            raise AdminError(
                f"clinic {name!r} already exists; use `spottune admin create-key`"
                " to give it another key"
            )
        clinic = Clinic(id=uuid.uuid4(), name=name)
        session.add(clinic)
        session.flush()
        new = _add_key(session, clinic.id)
        session.commit()
        return ClinicKey(clinic_id=clinic.id, name=name, key=new.key, prefix=new.prefix)


def create_key(
    name: str,
    *,
    session_factory: sessionmaker[Session] | None = None,
    settings: Settings | None = None,
) -> ClinicKey:
    """Another API key for an existing clinic (e.g. to rotate keys)."""
    with _factory(session_factory, settings)() as session:
        clinic = clinic_repo.clinic_by_name(session, name.strip())
        if clinic is None:
            raise AdminError(f"no clinic named {name!r}; create it with create-clinic")
        new = _add_key(session, clinic.id)
        session.commit()
        return ClinicKey(clinic_id=clinic.id, name=clinic.name, key=new.key, prefix=new.prefix)


def _add_key(session: Session, clinic_id: uuid.UUID) -> NewKey:
    generated = generate_key()
    session.add(
        ApiKey(
            id=uuid.uuid4(),
            clinic_id=clinic_id,
            prefix=generated.prefix,
            key_hash=generated.key_hash,
        )
    )
    session.flush()
    return generated


def revoke_key(
    key_or_prefix: str,
    *,
    session_factory: sessionmaker[Session] | None = None,
    settings: Settings | None = None,
) -> int:
    """Revoke the key (the full key or its first 12 characters); returns how many were revoked."""
    prefix = key_or_prefix.strip()[:PREFIX_CHARS]
    if len(prefix) < PREFIX_CHARS:
        raise AdminError(f"give the key or at least its first {PREFIX_CHARS} characters")
    with _factory(session_factory, settings)() as session:
        count = clinic_repo.revoke_keys(session, prefix=prefix, at=utcnow())
        session.commit()
    if count == 0:
        raise AdminError(f"no active key starts with {prefix!r}")
    return count


def revoke_clinic_keys(
    name: str,
    *,
    session_factory: sessionmaker[Session] | None = None,
    settings: Settings | None = None,
) -> int:
    """Revoke every key of clinic ``name``; returns how many were revoked."""
    with _factory(session_factory, settings)() as session:
        clinic = clinic_repo.clinic_by_name(session, name.strip())
        if clinic is None:
            raise AdminError(f"no clinic named {name!r}")
        count = clinic_repo.revoke_keys(session, clinic_id=clinic.id, at=utcnow())
        session.commit()
    return count


def purge_clinic(
    name: str,
    *,
    session_factory: sessionmaker[Session] | None = None,
    settings: Settings | None = None,
) -> dict[str, int]:
    """Delete clinic ``name`` and all its data (keys, scans, models, jobs, artefacts)."""
    from spottune.app.services.erase import purge_clinic as purge

    with _factory(session_factory, settings)() as session:
        clinic = clinic_repo.clinic_by_name(session, name.strip())
        if clinic is None:
            raise AdminError(f"no clinic named {name!r}")
        counts = purge(session, clinic.id)
        session.commit()
    return counts

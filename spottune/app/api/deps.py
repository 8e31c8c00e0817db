"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.repositories import clinics as clinic_repo
from spottune.app.security import PREFIX_CHARS, match_key, presented_key
from spottune.core.models import Clinic
from spottune.core.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="API key from `spottune admin create-clinic`")


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session_factory_dep(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory_dep)]


def get_session(factory: SessionFactoryDep) -> Iterator[Session]:
    """One session per request; routes commit explicitly, anything uncommitted is rolled back."""
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def authenticate(session: Session, scheme: str | None, credentials: str | None) -> Clinic:
    """The clinic whose active key is ``credentials``; 401 saying what is wrong otherwise."""
    key = presented_key(scheme, credentials)
    rows = clinic_repo.keys_with_prefix(session, key[:PREFIX_CHARS])
    return match_key(key, ((api_key.key_hash, clinic) for api_key, clinic in rows))


def get_current_clinic(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Clinic:
    if credentials is None:
        return authenticate(session, None, None)
    return authenticate(session, credentials.scheme, credentials.credentials)


CurrentClinic = Annotated[Clinic, Depends(get_current_clinic)]

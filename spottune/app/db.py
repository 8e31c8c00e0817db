"""Engine and session factory built from :class:`Settings` (SQLAlchemy 2, psycopg 3 or SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from spottune.app.settings import Settings, get_settings


class Base(DeclarativeBase):
    """Declarative base of every table (``migrations/env.py`` uses ``Base.metadata``)."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys and WAL, Postgres a pre-ping pool."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args={"connect_timeout": 5}
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@lru_cache
def _engine_for(url: str) -> Engine:
    return create_db_engine(url)


def get_engine(settings: Settings | None = None) -> Engine:
    """The process-wide engine for ``settings`` (default: :func:`get_settings`)."""
    return _engine_for((settings or get_settings()).database_url)


def get_session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    """The process-wide session factory (one per database URL)."""
    return _factory_for((settings or get_settings()).database_url)


@lru_cache
def _factory_for(url: str) -> sessionmaker[Session]:
    return make_session_factory(_engine_for(url))


@contextmanager
def session_scope(factory: sessionmaker[Session] | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (task/CLI boundary)."""
    session = (factory or get_session_factory())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

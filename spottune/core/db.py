"""Engine and session factory built from :class:`Settings` (SQLAlchemy 2, psycopg 3 or SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from spottune.core.settings import Settings, get_settings


class Base(DeclarativeBase):
    """Declarative base of every table (``migrations/env.py`` uses ``Base.metadata``)."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Deleted scans must not linger in free pages of the file: overwrite them with zeros.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def create_db_engine(
    url: str, pool_size: int = 40, max_overflow: int = 10, pre_ping: bool = True
) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys and WAL, Postgres a pool.

    The pool should cover the API's thread pool (40 threads by default), each request holding
    one connection: a smaller pool only makes requests queue for a connection.

    ``pre_ping`` tests every connection with a round trip as it leaves the pool (workers: a
    heartbeat must not fail on a connection the database closed). The API turns it off: a
    ping costs as much as a status poll's own query, and a connection found dead invalidates the
    whole pool, so after a database restart one request answers 503 and the next reconnect.
    """
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_pre_ping=pre_ping,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=10,
        connect_args={"connect_timeout": 5},
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@lru_cache
def _engine_for(
    url: str, pool_size: int = 40, max_overflow: int = 10, pre_ping: bool = True
) -> Engine:
    return create_db_engine(url, pool_size, max_overflow, pre_ping)


def get_engine(settings: Settings | None = None, pre_ping: bool = True) -> Engine:
    """The process-wide engine for ``settings`` (default: :func:`get_settings`)."""
    settings = settings or get_settings()
    return _engine_for(
        settings.database_url, settings.db_pool_size, settings.db_max_overflow, pre_ping
    )


def get_session_factory(
    settings: Settings | None = None, pre_ping: bool = True
) -> sessionmaker[Session]:
    """The process-wide session factory (one per database URL and ``pre_ping``)."""
    settings = settings or get_settings()
    return _factory_for(
        settings.database_url, settings.db_pool_size, settings.db_max_overflow, pre_ping
    )


@lru_cache
def _factory_for(
    url: str, pool_size: int = 40, max_overflow: int = 10, pre_ping: bool = True
) -> sessionmaker[Session]:
    return make_session_factory(_engine_for(url, pool_size, max_overflow, pre_ping))


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

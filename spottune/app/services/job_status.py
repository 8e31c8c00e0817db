"""A job's status as a poll reads it: the key checked and the job read in one statement.

Clinics poll ``GET /v1/jobs/{id}`` every second or so for hours, so this is the API's most
frequent request, and it is kept to one database round trip: the API key's lookup and the job
are one query (no session, no ORM objects) on a connection that stays open in autocommit on
Postgres (no BEGIN and no ROLLBACK around the query, no pool checkout and no ping). On Postgres
the query goes through psycopg's own cursor as a prepared statement: SQLAlchemy's execution of
even a prebuilt Core statement cost about three times the driver's. The body is serialised once,
and its ETag with it, so an unchanged job answers a bodiless 304; each reader thread keeps the
last body of the jobs it served, so polls of a job that did not change are not serialised again.

The route is async and hands the read to :class:`StatusReader`, a few threads of its own, each
keeping one connection. A hop into the request thread pool (40 threads contending for the GIL)
cost more CPU than the read itself, and a pool checkout and return about as much as the query;
polls also keep flowing while uploads hold the request thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.conditional import body_etag
from spottune.app.errors import NotFound
from spottune.app.repositories import jobs as job_repo
from spottune.app.security import PREFIX_CHARS, match_key
from spottune.core.job_view import job_out_of

logger = logging.getLogger(__name__)
BODIES_PER_THREAD = 4096  # jobs whose last body a reader thread keeps (about 1 KiB each)


@dataclass(frozen=True)
class StatusBody:
    """The JSON body of a job (``JobOut``), its ETag, and the headers of a 200 with it."""

    body: bytes
    etag: str
    headers: tuple[tuple[bytes, bytes], ...]  # ETag, Content-Length, Content-Type, as ASGI sends

    @classmethod
    def of(cls, body: bytes) -> StatusBody:
        etag = body_etag(body)
        headers = (
            (b"etag", etag.encode()),
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
        )
        return cls(body, etag, headers)


class BodyCache:
    """The last body built for each of the jobs polled lately, with the row it was built from.

    A job is polled far more often than it changes (a clinic polls every second or so, a training
    job writes its progress every few seconds, a finished one never), and a row equal to the last
    one gives the same body: only a changed row is serialised again. (Rows compare as Python values,
    so a JSON column rewritten from 1 to 1.0 would keep its old spelling until the row changes
    otherwise: the same number either way.) Not thread-safe: each reader thread keeps its own.
    """

    def __init__(self, size: int = BODIES_PER_THREAD) -> None:
        self.size = size
        self._bodies: OrderedDict[Any, tuple[tuple[Any, ...], StatusBody]] = OrderedDict()

    def body(self, values: tuple[Any, ...]) -> StatusBody:
        """The body of the job whose :data:`JOB_FIELDS` values are ``values`` (id first)."""
        job_id = values[0]
        known = self._bodies.get(job_id)
        if known is not None and known[0] == values:
            self._bodies.move_to_end(job_id)
            return known[1]
        found = StatusBody.of(job_out_of(values).model_dump_json().encode())
        self._bodies[job_id] = (values, found)
        self._bodies.move_to_end(job_id)
        if len(self._bodies) > self.size:
            self._bodies.popitem(last=False)
        return found


def status_engine(engine: Engine) -> Engine:
    """``engine`` (sharing its pool) in autocommit where a transaction costs round trips:
    psycopg sends BEGIN before a query and ROLLBACK when it ends. SQLite starts no transaction
    for a SELECT, and switching it to autocommit would cost a PRAGMA."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def status_body(
    rows: Sequence[Sequence[Any]], key: str, job_id: uuid.UUID, bodies: BodyCache | None = None
) -> StatusBody:
    """The job among ``rows`` (:func:`job_repo.keys_with_job`: each an active key's hash, then
    the job's :data:`JOB_FIELDS`) for ``key``; 401 or 404."""
    row = match_key(key, ((row[0], row) for row in rows))
    if row[1] is None:
        raise NotFound(f"job {job_id} not found; list your jobs with GET /v1/jobs")
    return (bodies or BodyCache(1)).body(tuple(row[1:]))


_Request = tuple[str, uuid.UUID, asyncio.AbstractEventLoop, "asyncio.Future[StatusBody]"]


class StatusReader:
    """Reads job statuses on ``threads`` threads, each with one connection kept open."""

    def __init__(self, factory: sessionmaker[Session], threads: int) -> None:
        self.factory = factory  # its engine is read on first use (schema-only apps have none)
        self.threads = threads
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def read(self, key: str, job_id: uuid.UUID) -> StatusBody:
        """The status of ``job_id`` for the clinic of ``key`` (401, 404 and 503 as errors)."""
        if not self._workers:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StatusBody] = loop.create_future()
        self._requests.put((key, job_id, loop, future))
        return await future

    def close(self) -> None:
        """Stop the threads once the reads already asked for are done; they close their
        connections."""
        with self._lock:
            for _ in self._workers:
                self._requests.put(None)
            self._workers = []

    def _start(self) -> None:
        with self._lock:  # started on first use: an app that is never polled has no threads
            if self._workers:
                return
            engine = status_engine(self.factory.kw["bind"])
            self._workers = [
                threading.Thread(
                    target=self._serve, args=(engine,), name=f"spottune-status-{i}", daemon=True
                )
                for i in range(self.threads)
            ]
            for worker in self._workers:
                worker.start()

    def _serve(self, engine: Engine) -> None:
        link = _Link(engine)
        bodies = BodyCache()
        try:
            while (request := self._requests.get()) is not None:
                key, job_id, loop, future = request
                try:
                    outcome: StatusBody | BaseException = status_body(
                        link.rows(key[:PREFIX_CHARS], job_id), key, job_id, bodies
                    )
                except Exception as exc:  # handed to the request, which answers it
                    outcome = exc
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_settle, future, outcome)
        finally:
            link.close()


class _Link:
    """One reader thread's connection, opened on first use and kept.

    On psycopg, once a read through SQLAlchemy has succeeded on the connection, the next ones go
    through a cursor of the driver's own: the same statement text, which psycopg prepares on the
    server at its fifth run on the connection whichever way it came (one extra round trip, once
    per connection, as before; asking for it at the first run would move that round trip into
    the connection's first reads, not save it). Any driver error sends that read through
    SQLAlchemy again on the same connection, which then sees the failure as every other query
    would: a lost connection invalidates the pool and is replaced, a database that is down is
    SQLAlchemy's ``OperationalError`` (503).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None
        self.cursor: psycopg.Cursor[Any] | None = None  # on self.conn's driver connection
        self.sql = (
            job_repo.keys_with_job_sql(engine.dialect) if engine.dialect.driver == "psycopg" else ""
        )

    def rows(self, prefix: str, job_id: uuid.UUID) -> Sequence[Sequence[Any]]:
        """A connection the database closed (a restart) is replaced and the read tried once
        more, so that a poll does not fail for it."""
        if self.cursor is not None:
            try:
                self.cursor.execute(self.sql, {"prefix": prefix, "job_id": job_id})
                return self.cursor.fetchall()
            except psycopg.Error:
                self.cursor = None  # SQLAlchemy reads it again below and handles what failed
        try:
            return self._query(prefix, job_id)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        logger.info("status read: the connection was lost; reading on a new one")
        return self._query(prefix, job_id)

    def _query(self, prefix: str, job_id: uuid.UUID) -> Sequence[Sequence[Any]]:
        if self.conn is None:
            self.conn = self.engine.connect()
        try:
            rows = job_repo.keys_with_job(self.conn, prefix, job_id)
            self.conn.rollback()  # ends the Connection's implicit transaction; sends nothing
        except Exception:
            self.close()  # never reuse a connection in an unknown state
            raise
        driver = self.conn.connection.dbapi_connection
        if self.sql and isinstance(driver, psycopg.Connection) and driver.autocommit:
            self.cursor = driver.cursor()  # in autocommit: a read never leaves a transaction open
        return rows

    def close(self) -> None:
        self.cursor = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _settle(future: asyncio.Future[StatusBody], outcome: StatusBody | BaseException) -> None:
    if future.cancelled():  # the client went away
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)

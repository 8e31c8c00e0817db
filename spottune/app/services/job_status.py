"""A job's status as a poll reads it: the key checked and the job read in one statement.

Clinics poll ``GET /v1/jobs/{id}`` every second or so for hours, so this is the API's most
frequent request, and it is kept to one database round trip: the API key's lookup and the job
are one query (Core, no session, no ORM objects) on a connection that stays open in autocommit
on Postgres (no BEGIN and no ROLLBACK around the query, no pool checkout and no ping). The body
is serialised once, and its ETag with it, so an unchanged job answers a bodiless 304.

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
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.conditional import body_etag
from spottune.app.errors import NotFound
from spottune.app.repositories import jobs as job_repo
from spottune.app.security import PREFIX_CHARS, match_key
from spottune.core.job_view import job_out

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatusBody:
    """The JSON body of a job (``JobOut``) and its ETag."""

    body: bytes
    etag: str


def status_engine(engine: Engine) -> Engine:
    """``engine`` (sharing its pool) in autocommit where a transaction costs round trips:
    psycopg sends BEGIN before a query and ROLLBACK when it ends. SQLite starts no transaction
    for a SELECT, and switching it to autocommit would cost a PRAGMA."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def status_body(rows: list[Row[Any]], key: str, job_id: uuid.UUID) -> StatusBody:
    """The job among ``rows`` (:func:`job_repo.keys_with_job`) for ``key``; 401 or 404."""
    job = match_key(key, ((row.key_hash, row) for row in rows))
    if job.id is None:
        raise NotFound(f"job {job_id} not found; list your jobs with GET /v1/jobs")
    body = job_out(job).model_dump_json().encode()
    return StatusBody(body, body_etag(body))


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
        try:
            while (request := self._requests.get()) is not None:
                key, job_id, loop, future = request
                try:
                    outcome: StatusBody | BaseException = status_body(
                        link.rows(key[:PREFIX_CHARS], job_id), key, job_id
                    )
                except Exception as exc:  # handed to the request, which answers it
                    outcome = exc
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_settle, future, outcome)
        finally:
            link.close()


class _Link:
    """One reader thread's connection, opened on first use and kept."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None

    def rows(self, prefix: str, job_id: uuid.UUID) -> list[Row[Any]]:
        """A connection the database closed (a restart) is replaced and the read tried once
        more, so that a poll does not fail for it."""
        try:
            return self._query(prefix, job_id)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        logger.info("status read: the connection was lost; reading on a new one")
        return self._query(prefix, job_id)

    def _query(self, prefix: str, job_id: uuid.UUID) -> list[Row[Any]]:
        if self.conn is None:
            self.conn = self.engine.connect()
        try:
            rows = job_repo.keys_with_job(self.conn, prefix, job_id)
            self.conn.rollback()  # ends the Connection's implicit transaction; sends nothing
        except Exception:
            self.close()  # never reuse a connection in an unknown state
            raise
        return rows

    def close(self) -> None:
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

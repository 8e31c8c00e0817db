"""Refuse requests with a body (uploads, job requests) whose API key is not valid, before the
body is read: an unauthenticated client must not make the API spool a gigabyte to disk."""

from __future__ import annotations

import logging

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from spottune.app.api.deps import authenticate
from spottune.app.errors import Unauthorized, database_unavailable_response, error_response

logger = logging.getLogger(__name__)
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class AuthGateMiddleware:
    """A 401 (or 503 while the database is down) before the body of a /v1 request is read.

    Routes still authenticate through ``CurrentClinic``; this only moves the refusal earlier.
    """

    def __init__(self, app: ASGIApp, session_factory: sessionmaker[Session]) -> None:
        self.app = app
        self.session_factory = session_factory

    def _check(self, authorization: str | None) -> None:
        scheme, _, credentials = (authorization or "").partition(" ")
        with self.session_factory() as session:
            authenticate(session, scheme or None, credentials or None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _WITH_BODY
            and str(scope["path"]).startswith("/v1/")
        ):
            raw = dict(scope.get("headers") or []).get(b"authorization")
            try:
                await run_in_threadpool(self._check, raw.decode("latin-1") if raw else None)
            except Unauthorized as exc:
                response = error_response(exc.status_code, exc.code, exc.message, exc.headers)
                await response(scope, receive, send)
                return
            except (OperationalError, InterfaceError) as exc:
                logger.warning("request refused, database unavailable: %s", type(exc).__name__)
                await database_unavailable_response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

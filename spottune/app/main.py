"""The FastAPI application.

Run with ``uvicorn spottune.app.main:create_app --factory``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Receive, Scope, Send

from spottune.app.api.idempotency import IdempotentReplay, replay_handler
from spottune.app.api.routes import health, jobs, masks, models, scans, webhooks
from spottune.app.auth_gate import AuthGateMiddleware
from spottune.app.conditional import ConditionalGetMiddleware
from spottune.app.errors import install_error_handlers
from spottune.app.ratelimit import RateLimitMiddleware, rate_limiter
from spottune.app.readiness import Readiness
from spottune.app.services.job_status import StatusReader
from spottune.app.status_poll import StatusPoll
from spottune.app.timing import ServerTimingMiddleware
from spottune.app.uploads import MULTIPART_SLACK, BodyLimitMiddleware
from spottune.core.db import get_session_factory
from spottune.core.settings import Settings, get_settings

DESCRIPTION = (
    "Few-shot adaptation of brain-MRI segmentation models to a clinic's scanner. "
    "Authenticate with `Authorization: Bearer <api key>`; errors answer "
    '`{"error": {"code": ..., "message": ...}}`.'
)


class SpottuneAPI(FastAPI):
    """FastAPI, with job status polls answered in front of the middleware stack (see
    :mod:`spottune.app.status_poll`); every other request goes through the stack."""

    status_poll: StatusPoll | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.status_poll is not None and scope["type"] == "http":
            poll = self.status_poll.match(scope)
            if poll is not None:
                await self.status_poll(scope, receive, send, poll)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None, session_factory: sessionmaker[Session] | None = None
) -> SpottuneAPI:
    """Build the API for ``settings`` (default: the environment's) and a session factory."""
    settings = settings or get_settings()
    # No pre-ping in the API: a ping is a round trip per request (see create_db_engine).
    factory = session_factory or get_session_factory(settings, pre_ping=False)
    status_reader = StatusReader(factory, settings.status_read_threads)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        status_reader.close()

    app = SpottuneAPI(title="spottune", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.session_factory = factory
    app.state.status_reader = status_reader
    app.state.readiness = Readiness()
    install_error_handlers(app)
    app.add_exception_handler(IdempotentReplay, replay_handler)
    app.add_middleware(ConditionalGetMiddleware)
    # Image and mask may each reach max_upload_bytes; the rest of a request is small.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=2 * settings.max_upload_bytes + MULTIPART_SLACK
    )
    # Added last, so outermost: an unauthenticated upload is refused before its body is read.
    app.add_middleware(AuthGateMiddleware, session_factory=app.state.session_factory)
    # Outermost of all: a flood from one key is refused before it costs a database query.
    limiter = rate_limiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    app.add_middleware(ServerTimingMiddleware)  # times everything above
    # Status polls skip all of the above and FastAPI's routing; what these middlewares do for a
    # poll, it does itself (with the same rate limiter). A middleware added here must be too.
    app.status_poll = StatusPoll(app, status_reader, limiter)
    # Routes are matched in order, each at a cost: the jobs router (job status polls, the most
    # frequent request by far) comes first. No two routers share a path.
    routers = (jobs.router, health.router, models.router, scans.router, masks.router)
    for router in (*routers, webhooks.router):
        app.include_router(router)
    return app

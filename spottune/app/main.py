"""The FastAPI application.

Run with ``uvicorn spottune.app.main:create_app --factory``.
"""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.api.idempotency import IdempotentReplay, replay_handler
from spottune.app.api.routes import health, jobs, masks, models, scans, webhooks
from spottune.app.auth_gate import AuthGateMiddleware
from spottune.app.conditional import ConditionalGetMiddleware
from spottune.app.errors import install_error_handlers
from spottune.app.ratelimit import RateLimitMiddleware
from spottune.app.readiness import Readiness
from spottune.app.uploads import MULTIPART_SLACK, BodyLimitMiddleware
from spottune.core.db import get_session_factory
from spottune.core.settings import Settings, get_settings

DESCRIPTION = (
    "Few-shot adaptation of brain-MRI segmentation models to a clinic's scanner. "
    "Authenticate with `Authorization: Bearer <api key>`; errors answer "
    '`{"error": {"code": ..., "message": ...}}`.'
)


def create_app(
    settings: Settings | None = None, session_factory: sessionmaker[Session] | None = None
) -> FastAPI:
    """Build the API for ``settings`` (default: the environment's) and a session factory."""
    settings = settings or get_settings()
    app = FastAPI(title="spottune", version="1", description=DESCRIPTION)
    app.state.settings = settings
    app.state.session_factory = session_factory or get_session_factory(settings)
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
    app.add_middleware(
        RateLimitMiddleware,
        per_minute=settings.rate_limit_per_minute,
        burst=settings.rate_limit_burst,
    )
    routers = (health.router, models.router, scans.router, jobs.router, masks.router)
    for router in (*routers, webhooks.router):
        app.include_router(router)
    return app

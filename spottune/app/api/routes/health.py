"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from spottune.app.api.deps import SessionFactoryDep, SettingsDep
from spottune.app.tasks import broker_reachable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(factory: SessionFactoryDep, settings: SettingsDep) -> JSONResponse:
    """Ready when both the database and the broker answer; 503 otherwise."""
    checks: dict[str, str] = {}
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unreachable"
    checks["broker"] = "ok" if broker_reachable(settings) else "unreachable"
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
    if not ready:
        down = ", ".join(k for k, v in checks.items() if v != "ok")
        body["error"] = {
            "code": "not_ready",
            "message": f"unreachable: {down}; check the "
            "SPOTTUNE_DATABASE_URL / SPOTTUNE_BROKER_URL services",
        }
    return JSONResponse(body, status_code=200 if ready else 503)

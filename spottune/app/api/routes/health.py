"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from spottune.app.api.deps import SessionFactoryDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked; async: no thread for a constant)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, factory: SessionFactoryDep, settings: SettingsDep) -> JSONResponse:
    """Ready when both the database and the broker answer (a success is reused a moment)."""
    checks = request.app.state.readiness.check(factory, settings)
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

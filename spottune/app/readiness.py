"""Readiness that stays cheap under frequent probes.

Load balancers and orchestrators probe ``/readyz`` every second or so, from several places.
Each real check opens a broker connection and takes a database connection; a success is
therefore reused for ``readiness_cache_s`` seconds, while a failure is checked again on every
probe so that recovery shows at once.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.tasks import broker_reachable
from spottune.core.settings import Settings


class Readiness:
    """The last successful check of the database and the broker, shared by all probes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ok_until = 0.0

    def check(self, factory: sessionmaker[Session], settings: Settings) -> dict[str, str]:
        """``{"database": "ok" | "unreachable", "broker": ...}``."""
        with self._lock:  # concurrent probes wait for one check instead of each running one
            if time.monotonic() < self._ok_until:
                return {"database": "ok", "broker": "ok"}
            checks = {"database": _database(factory)}
            checks["broker"] = "ok" if broker_reachable(settings) else "unreachable"
            if all(v == "ok" for v in checks.values()):
                self._ok_until = time.monotonic() + settings.readiness_cache_s
            return checks


def _database(factory: sessionmaker[Session]) -> str:
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
    except Exception:
        return "unreachable"
    return "ok"

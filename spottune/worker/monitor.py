"""A job's heartbeat: a thread that writes progress each second and notices a cancel.

The training loop only stores numbers in memory (no database work on the hot path); one short
transaction per second carries them. A cancel request, or losing the job, sets
``stop_requested``, which ``should_stop()`` and the progress callback read.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from spottune.core import job_state
from spottune.core.db import session_scope
from spottune.core.job_state import JobLost
from spottune.ml.loop import Cancelled

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0  # progress flush + cancel check period (a cancelled job stops in ~1-2 s)


class JobMonitor:
    """Heartbeat + latest progress every ``interval_s``; polls for a cancel request."""

    def __init__(self, factory: sessionmaker[Session], job_id: uuid.UUID, attempt: int,
                 interval_s: float = POLL_INTERVAL_S) -> None:
        self._factory = factory
        self._job_id = job_id
        self._attempt = attempt
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._stop = threading.Event()
        self._done = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._loop, name=f"job-{job_id}", daemon=True)

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def report(self, step: int, total: int, loss: float | None, eta_seconds: float | None) -> None:
        with self._lock:
            self._pending = {"progress_step": int(step), "progress_total": int(total),
                             "loss": None if loss is None else float(loss),
                             "eta_seconds": None if eta_seconds is None else float(eta_seconds)}
        self.check()

    def check(self) -> None:
        if self._stop.is_set():
            raise JobLost(str(self._job_id)) if self.lost else Cancelled("cancel requested")

    def _loop(self) -> None:
        while not self._done.wait(self._interval_s):
            try:
                self.flush()
            except Exception:  # a database hiccup must not kill the job; retry next tick
                logger.warning("job %s: heartbeat failed", self._job_id, exc_info=True)

    def flush(self) -> None:
        """Write heartbeat and pending progress; read cancel_requested (one short transaction)."""
        with self._lock:
            values, self._pending = self._pending, {}
        with session_scope(self._factory) as session:
            cancel = job_state.heartbeat(session, self._job_id, self._attempt, values)
        if cancel is None:
            self.lost = True
            self._stop.set()
        elif cancel:
            self._stop.set()

"""The API's client-only Celery app: sends tasks by name, after the transaction commits.

The API never imports task code (``spottune.worker``); messages carry only the job id.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from spottune.core.broker import Queue, TaskName, celery_config
from spottune.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_PENDING = "spottune_pending_jobs"


def make_celery_client(settings: Settings) -> Celery:
    app = Celery("spottune-api", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


_clients: dict[tuple[str, str], Celery] = {}


def get_celery_client(settings: Settings | None = None) -> Celery:
    """One client per broker (built lazily; connections are pooled by kombu)."""
    settings = settings or get_settings()
    key = (settings.broker_url, str(settings.data_dir))
    if key not in _clients:
        _clients[key] = make_celery_client(settings)
    return _clients[key]


def send_run_job(
    job_id: uuid.UUID, settings: Settings | None = None, queue: Queue = Queue.GPU
) -> bool:
    """Send ``spottune.run_job(job_id)`` now; False (logged) if the broker is unreachable.

    A job whose message is lost stays ``queued``; the reconciler enqueues it again later.
    """
    settings = settings or get_settings()
    client = get_celery_client(settings)
    try:
        client.send_task(
            TaskName.RUN_JOB.value,
            args=[str(job_id)],
            queue=queue.value,
            retry=True,
            retry_policy={
                "max_retries": 1,
                "interval_start": 0,
                "interval_step": 0.2,
                "interval_max": 0.2,  # kombu ensure() takes no "timeout"
            },
        )
    except Exception as exc:  # the broker being down must not fail the request
        logger.warning(
            "broker unreachable, job %s stays queued for the reconciler: %s", job_id, exc
        )
        return False
    return True


def enqueue_after_commit(
    session: Session,
    job_id: uuid.UUID,
    settings: Settings | None = None,
    queue: Queue = Queue.GPU,
) -> None:
    """Send ``run_job(job_id)`` to ``queue`` once ``session`` commits; dropped on rollback."""
    session.info.setdefault(_PENDING, []).append((job_id, settings, queue))


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    pending: list[tuple[uuid.UUID, Settings | None, Queue]] = session.info.pop(_PENDING, [])
    for job_id, settings, queue in pending:
        send_run_job(job_id, settings, queue)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, previous_transaction: Any) -> None:
    if session.info.pop(_PENDING, None):
        logger.info("transaction rolled back: pending job messages dropped")


def broker_reachable(settings: Settings | None = None, timeout_s: float = 2.0) -> bool:
    """Readiness probe: can a connection to the broker be established?"""
    client = get_celery_client(settings)
    try:
        with client.connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout_s
            )
    except Exception as exc:
        logger.warning("broker not reachable: %s", exc)
        return False
    return True

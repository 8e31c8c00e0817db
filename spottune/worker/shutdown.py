"""Hand running jobs back to the queue when a worker is asked to stop.

Celery's warm shutdown waits for the running task to finish, which for a training job can take
hours; ``spottune serve`` (and systemd, ``docker stop``) will not wait that long and end up
killing the worker, so the job sat ``running`` until its heartbeat went stale. Instead, as soon
as the worker starts shutting down it stops consuming and its running jobs are put back to
``queued`` in the database. The task's heartbeat thread sees within a second that the job is no
longer its own, stops training and returns, so the warm shutdown completes at once. A new
message for each job is sent when the worker has stopped (so this worker cannot take it again)
and the job runs on the next worker, with one more attempt recorded.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from kombu.common import ignore_errors
from sqlalchemy import update

from spottune.core.broker import Queue, TaskName, queue_for
from spottune.core.db import get_session_factory, session_scope
from spottune.core.models import Job, JobStatus, utcnow

logger = logging.getLogger(__name__)

RELEASE_TIMEOUT_S = 10.0
_consumer: list[Any] = []  # the worker's consumer, once it is ready
_released: list[tuple[uuid.UUID, Queue]] = []  # jobs to send again once the worker has stopped


def running_tasks() -> int:
    """How many ``run_job`` tasks this worker process is running now (Celery's active requests)."""
    from celery.worker import state

    return sum(1 for r in list(state.active_requests) if r.task_name == TaskName.RUN_JOB.value)


def release_jobs(worker: str) -> list[tuple[uuid.UUID, Queue]]:
    """Put the jobs ``worker`` is running back to queued; returns their ids and queues.

    A message may run another job than the one it names (fair share), so jobs are found by the
    worker name the runner recorded when it claimed them. The UPDATE is guarded by status and
    worker: a job another worker has taken over, or one that finished a moment ago, is left alone.
    """
    with session_scope(get_session_factory()) as session:
        released = session.execute(
            update(Job)
            .where(Job.status == JobStatus.RUNNING, Job.worker == worker[:200])
            .values(status=JobStatus.QUEUED, worker=None, heartbeat_at=None,
                    enqueued_at=utcnow(), eta_seconds=None)
            .returning(Job.id, Job.params)
        ).all()
    return [(job_id, queue_for(params)) for job_id, params in released]


def _release(worker: str) -> None:
    try:
        released = release_jobs(worker)
    except Exception:  # the database may be down: the reconciler repairs stale jobs later
        logger.warning("could not re-queue running jobs at shutdown", exc_info=True)
        return
    _released.extend(released)
    if released:
        logger.warning("worker %s stopping: re-queued running jobs %s", worker,
                       ", ".join(str(j) for j, _ in released))


@worker_shutting_down.connect
def _requeue_running_jobs(sender: Any = None, **_: Any) -> None:
    """Runs in the worker's main process from its signal handler; the work happens in a thread
    (no database I/O inside a signal handler), joined with a bound so shutdown never hangs."""
    if not sender or not running_tasks():
        return
    for consumer in _consumer:  # warm shutdown would otherwise go on taking messages
        if consumer.task_consumer is not None:
            ignore_errors(consumer, consumer.task_consumer.cancel)
    thread = threading.Thread(target=_release, args=(str(sender),),
                              name="spottune-release")
    thread.start()
    thread.join(RELEASE_TIMEOUT_S)


@worker_ready.connect
def _remember_consumer(sender: Any = None, **_: Any) -> None:
    _consumer[:] = [sender] if sender is not None else []


@worker_shutdown.connect
def _send_released(**_: Any) -> None:
    """Messages for the released jobs, now that this worker takes none of them."""
    from spottune.worker.celery_app import app  # loaded long ago: this module is its import

    while _released:
        job_id, queue = _released.pop()
        try:
            app.send_task(TaskName.RUN_JOB.value, args=[str(job_id)], queue=queue.value)
        except Exception:  # the broker is down: the reconciler re-sends queued jobs later
            logger.warning("could not re-send job %s at shutdown", job_id, exc_info=True)

"""Fair share between clinics: which queued job a free worker runs next.

The broker is first come, first served: a clinic that queues 100 adaptations would hold every
worker for hours before another clinic's job starts. So a ``run_job`` message is treated as a
turn for *some* queued job, and the worker asks the database which one: the oldest queued job
of the clinic with the fewest running jobs, ties going to the clinic served least recently.
Each queued job still has one message, so the number of turns equals the number of jobs; the
job a turn runs is chosen here. Another clinic's new job therefore waits for at most one
running job per worker, however many jobs the first clinic has queued.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from spottune.contract import JobStatus
from spottune.core.broker import Queue
from spottune.core.models import Job


def _on_queue(queue: Queue) -> ColumnElement[bool]:
    """Jobs whose params send them to ``queue`` (see :func:`spottune.core.broker.queue_for`)."""
    device = Job.params["device"].as_string()
    if queue == Queue.CPU:
        return device == Queue.CPU.value
    return or_(device.is_(None), device != Queue.CPU.value)


def next_job(
    session: Session, exclude: Collection[uuid.UUID] = (), queue: Queue = Queue.GPU
) -> uuid.UUID | None:
    """The queued job of ``queue`` to run next (not in ``exclude``), or None if none waits.

    A message is only a turn for jobs of the queue it came from: a CPU worker never takes a
    job that asked for a GPU.
    """
    running = (
        select(Job.clinic_id, func.count().label("n"))
        .where(Job.status == JobStatus.RUNNING)
        .group_by(Job.clinic_id)
        .subquery()
    )
    waiting = select(Job.clinic_id).where(Job.status == JobStatus.QUEUED)
    served = (  # only clinics that wait: an index lookup each (ix_jobs_clinic_started)
        select(Job.clinic_id, func.max(Job.started_at).label("last"))
        .where(Job.clinic_id.in_(waiting), Job.started_at.is_not(None))
        .group_by(Job.clinic_id)
        .subquery()
    )
    stmt = (
        select(Job.id)
        .outerjoin(running, running.c.clinic_id == Job.clinic_id)
        .outerjoin(served, served.c.clinic_id == Job.clinic_id)
        .where(Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False), _on_queue(queue))
        .order_by(
            func.coalesce(running.c.n, 0),
            served.c.last.asc().nulls_first(),
            Job.created_at,
            Job.id,
        )
        .limit(1)
    )
    if exclude:
        stmt = stmt.where(Job.id.not_in(list(exclude)))
    return session.scalars(stmt).first()

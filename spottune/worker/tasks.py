"""Celery tasks: thin wrappers that pass a job id to the runner (state lives in the database)."""

from __future__ import annotations

from celery import Task

from spottune.core.broker import TaskName
from spottune.worker import reconciler, runner
from spottune.worker.celery_app import app


@app.task(name=TaskName.RUN_JOB.value, bind=True, acks_late=True, ignore_result=True)
def run_job(self: Task, job_id: str) -> str:
    """Run job ``job_id`` to a terminal state (idempotent: see :mod:`spottune.worker.runner`)."""
    return runner.run_job(job_id, worker=self.request.hostname or "worker")


@app.task(name=TaskName.RECONCILE.value, ignore_result=True)
def reconcile() -> dict[str, int]:
    """One reconciliation pass (for celery beat; the worker also runs it as a thread loop)."""
    return reconciler.reconcile_once(app).as_dict()

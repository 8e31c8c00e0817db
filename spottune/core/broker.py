"""What the API and the worker agree on about the broker: task names, queues, Celery settings.

The API sends tasks by name through a client-only app (:mod:`spottune.app.tasks`); the worker
app (:mod:`spottune.worker.celery_app`) registers the task code. Messages carry a job id only.
"""

from __future__ import annotations

import enum
from typing import Any

from spottune.core.settings import Settings


class TaskName(enum.StrEnum):
    RUN_JOB = "spottune.run_job"
    RECONCILE = "spottune.reconcile"


class Queue(enum.StrEnum):
    """One queue per device a job may ask for; each kind of worker consumes its own."""

    GPU = "gpu"
    CPU = "cpu"


def queue_for(params: dict[str, Any]) -> Queue:
    """The queue of a job from its stored request (``device``: "gpu" unless it asked "cpu")."""
    return Queue.CPU if params.get("device") == Queue.CPU.value else Queue.GPU


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the API client and the worker app (same broker, same queue)."""
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": settings.broker_transport_options(),
        "broker_connection_timeout": settings.broker_send_timeout_s,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": Queue.GPU.value,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
    }

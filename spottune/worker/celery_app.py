"""The worker's Celery application: ``celery -A spottune.worker.celery_app worker -Q gpu -c 1``.

Same broker settings as the API's client-only app (:mod:`spottune.core.broker`); this one also
registers the task code. Jobs run for hours, so a message is acknowledged only after its task
returns (``task_acks_late``), a worker takes one message at a time, and a message whose worker
died goes back to the queue. Redelivery is harmless: the runner claims a job atomically in the
database and a job whose results exist is never run twice.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from spottune.core.broker import Queue, TaskName, celery_config
from spottune.core.db import get_engine
from spottune.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

FS_POLL_INTERVAL_S = 0.2


def create_worker_app(settings: Settings | None = None) -> Celery:
    """A Celery app with the worker's reliability settings for ``settings``."""
    settings = settings or get_settings()
    app = Celery("spottune", include=["spottune.worker.tasks"])
    app.conf.update(celery_config(settings))
    embedded = settings.broker_url.startswith("filesystem://")
    if embedded:  # poll the message folder often: jobs start and Ctrl-C stops without delay
        options = {**app.conf.broker_transport_options, "polling_interval": FS_POLL_INTERVAL_S}
        app.conf.broker_transport_options = options
    app.conf.update(
        task_routes={TaskName.RUN_JOB.value: {"queue": Queue.GPU.value}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # The filesystem broker has no fan-out worth using: no remote control or events there.
        worker_enable_remote_control=not embedded,
        worker_send_task_events=False,
    )
    return app


app = create_worker_app()

from spottune.worker import shutdown  # noqa: E402, F401  (connects the shutdown hook)

_reconciler_stop = threading.Event()
_webhooks_stop = threading.Event()


@worker_process_init.connect
def _fresh_db_pool(**_: Any) -> None:
    """A forked pool process must not reuse the parent's database connections."""
    get_engine().dispose(close=False)


@worker_init.connect  # the process that runs tasks with the solo and threads pools
@worker_process_init.connect  # each prefork pool process
def _keep_freed_memory(**_: Any) -> None:
    """Task processes train and infer: reuse freed large tensors instead of re-faulting them."""
    from spottune.ml.device import keep_freed_memory

    keep_freed_memory()


@worker_init.connect  # the main process, before the pool starts: its processes inherit it
def _lower_priority(**_: Any) -> None:
    """A worker sharing the machine with the API yields the CPU to it (``worker_nice``)."""
    nice = get_settings().worker_nice
    if nice is not None and nice > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, nice)


@worker_init.connect  # the process that runs tasks with the solo and threads pools
@worker_process_init.connect  # each prefork pool process
def _cap_torch_threads(**_: Any) -> None:
    """Training and inference use ``worker_torch_threads`` threads (default: torch's own)."""
    import torch

    threads = get_settings().worker_torch_threads
    if threads is not None:
        torch.set_num_threads(threads)
    logger.info(
        "task process %d: %d torch threads, nice %d",
        os.getpid(), torch.get_num_threads(), os.getpriority(os.PRIO_PROCESS, 0),
    )


@worker_ready.connect
def _start_reconciler(sender: Any = None, **_: Any) -> None:
    """Run the reconciler loop as a daemon thread in the worker's main process."""
    from spottune.worker.reconciler import run_forever

    _reconciler_stop.clear()
    thread = threading.Thread(
        target=run_forever, args=(app, _reconciler_stop), name="spottune-reconciler", daemon=True
    )
    thread.start()
    logger.info("reconciler started (every %.0f s)", get_settings().reconcile_interval_s)


@worker_ready.connect
def _start_webhooks(sender: Any = None, **_: Any) -> None:
    """Deliver webhook events from a daemon thread of the worker's main process."""
    from spottune.worker.webhooks import run_forever

    _webhooks_stop.clear()
    threading.Thread(
        target=run_forever, args=(_webhooks_stop,), name="spottune-webhooks", daemon=True
    ).start()


@worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    _reconciler_stop.set()
    _webhooks_stop.set()

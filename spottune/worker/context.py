"""What a job handler receives: ids, typed params, a device and the lifecycle hooks."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from sqlalchemy.orm import Session, sessionmaker

from spottune.contract import JobKind, JobParams
from spottune.core.settings import Settings
from spottune.ml.loop import Progress
from spottune.worker.monitor import JobMonitor
from spottune.worker.results import JobOutput

P = TypeVar("P", bound=JobParams)


@dataclass
class JobContext:
    job_id: uuid.UUID
    clinic_id: uuid.UUID
    kind: JobKind
    params: JobParams
    attempt: int
    settings: Settings
    session_factory: sessionmaker[Session]
    device: torch.device
    monitor: JobMonitor

    def params_as(self, kind: type[P]) -> P:
        """The params, typed as the handler expects (the registry pairs kinds and handlers)."""
        if not isinstance(self.params, kind):
            raise TypeError(f"job {self.job_id}: expected {kind.__name__}, "
                            f"got {type(self.params).__name__}")
        return self.params

    def progress(self, step: int, total: int, loss: float | None = None,
                 eta_seconds: float | None = None) -> None:
        """Record progress (flushed ~1/s); raises Cancelled once a stop was requested."""
        self.monitor.report(step, total, loss, eta_seconds)

    def ml_progress(self, progress: Progress) -> None:
        """Adapter for the ``progress`` callback of :mod:`spottune.ml.train`."""
        self.progress(progress.step, progress.total, progress.loss, progress.eta_seconds)

    def should_stop(self) -> bool:
        return self.monitor.stop_requested

    def check_stop(self) -> None:
        """Raise Cancelled (or JobLost) if the job should stop now."""
        self.monitor.check()


JobHandler = Callable[[JobContext], JobOutput]

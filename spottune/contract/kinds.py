"""The words every room shares: job kinds and states, adaptation methods, policy kinds.

Each list is written here once; the API, the worker, the command line, the library and the
benchmarks import it. Adding an adaptation method is one entry in ``Method`` plus its
implementation in ``spottune.ml`` (a test checks that every method here runs there).
"""

from __future__ import annotations

import enum
from typing import Literal, get_args


class JobKind(enum.StrEnum):
    """What a job does; each kind has its own params model and worker handler."""

    ADAPTATION = "adaptation"
    SEGMENTATION = "segmentation"
    PRETRAINING = "pretraining"


class JobStatus(enum.StrEnum):
    """A job's state; the worker moves it, the API only creates and cancels."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)

Method = Literal["spottune", "finetune-all", "finetune-first", "finetune-last", "none"]
"""How a model is adapted: SpotTUnet's learned policy, or a fixed choice of trainable blocks."""
METHODS: tuple[Method, ...] = get_args(Method)

PolicyKind = Literal["instance", "global"]
"""SpotTUnet policy: per slice (an agent network) or one learned choice per gate."""
POLICY_KINDS: tuple[PolicyKind, ...] = get_args(PolicyKind)

Device = Literal["gpu", "cpu"]
"""Which workers run a job: each device has its own queue."""
DEVICES: tuple[Device, ...] = get_args(Device)

ScorePhase = Literal["before", "after"]
"""Which model scored a scan: the base model (before) or the job's model (after)."""

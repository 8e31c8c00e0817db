"""Which handler runs each job kind. A new kind: a params model in the contract, a handler here."""

from __future__ import annotations

from spottune.contract import JobKind
from spottune.worker.context import JobHandler
from spottune.worker.jobs import adaptation, pretraining, segmentation

HANDLERS: dict[JobKind, JobHandler] = {
    JobKind.ADAPTATION: adaptation.run,
    JobKind.SEGMENTATION: segmentation.run,
    JobKind.PRETRAINING: pretraining.run,
}

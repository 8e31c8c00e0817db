"""Segmentation job (:class:`spottune.contract.SegmentationParams`): one mask per scan."""

from __future__ import annotations

from collections.abc import Callable

from spottune.contract import SegmentationParams
from spottune.core.db import session_scope
from spottune.ml.inference import segment_volume
from spottune.ml.volumes import mask_to_nifti_bytes
from spottune.worker.context import JobContext
from spottune.worker.jobs.inputs import load_scans, load_stored_model, scan_metric
from spottune.worker.results import JobOutput

PER_SCAN_STEPS = 100  # progress resolution within one scan


def scan_progress(ctx: JobContext, index: int, n_scans: int) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` for scan ``index`` mapped onto the job's overall steps."""

    def report(done: int, total: int) -> None:
        within = PER_SCAN_STEPS * done // total if total else PER_SCAN_STEPS
        ctx.progress(index * PER_SCAN_STEPS + within, n_scans * PER_SCAN_STEPS)

    return report


def run(ctx: JobContext) -> JobOutput:
    params = ctx.params_as(SegmentationParams)
    with session_scope(ctx.session_factory) as session:
        row, model, config = load_stored_model(session, ctx.clinic_id, params.model_id,
                                               ctx.device)
        scans = load_scans(session, ctx.clinic_id, params.scan_ids)
        model_id = row.id
    output = JobOutput(masks_model_id=model_id)
    for index, scan in enumerate(scans):
        mask = segment_volume(model, scan.volume, config.preprocessing, device=ctx.device,
                              batch_size=params.options.batch_size,
                              largest_component=params.options.largest_component,
                              progress=scan_progress(ctx, index, len(scans)))
        output.masks[scan.id] = mask_to_nifti_bytes(mask, scan.volume.affine)
        if scan.mask is not None and scan.annotated_slices is None:
            output.metrics.append(scan_metric(scan, mask.astype(bool), "after"))
    ctx.progress(len(scans) * PER_SCAN_STEPS, len(scans) * PER_SCAN_STEPS)
    return output

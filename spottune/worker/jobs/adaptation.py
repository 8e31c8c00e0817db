"""Adaptation job (:class:`spottune.contract.AdaptationParams`).

Adapts the base model on the annotated train scans (once per replicate seed when `replicates` > 1,
delivering the replicate with the best surface Dice on the validation scans, else the most typical
policy), segments every target scan with the adapted model (and, where a target has a full mask,
with the base model too: Dice before vs after), scores the validation scans before and after,
records the SpotTUnet policy on the target slices, and renders the report.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
from torch import nn

from spottune.contract import AdaptationParams, ScanScore
from spottune.core.db import session_scope
from spottune.ml.checkpoint import weights_to_bytes
from spottune.ml.config import Preprocessing
from spottune.ml.inference import segment_volume
from spottune.ml.network import UNet
from spottune.ml.preparation import prepare_volume
from spottune.ml.replicates import adapt_replicates
from spottune.ml.report import overlay_png, policy_chart_png, render_report_html, training_curve_png
from spottune.ml.spottune import SpotTUNet
from spottune.ml.train import AdaptResult, PolicyRecord, policy_record
from spottune.ml.volumes import mask_to_nifti_bytes
from spottune.worker.context import JobContext
from spottune.worker.jobs.inputs import (
    InputError,
    ScanData,
    load_scans,
    load_stored_model,
    scan_metric,
)
from spottune.worker.results import JobOutput, NewModel

MAX_OVERLAYS = 3


def _segment(ctx: JobContext, model: nn.Module, scan: ScanData, prep: Preprocessing) -> np.ndarray:
    """uint8 mask [X, Y, Z] on the scan's grid; stops promptly on a cancel request."""
    return segment_volume(model, scan.volume, prep, device=ctx.device,
                          progress=lambda _done, _total: ctx.check_stop())


def _overlay(scan: ScanData, mask: np.ndarray, prep: Preprocessing) -> bytes:
    """The prepared slice where the predicted brain is largest, with the reference if known."""
    predicted = prepare_volume(scan.volume, prep, mask.astype(bool))
    assert predicted.mask is not None
    index = int(predicted.mask.reshape(len(predicted.mask), -1).sum(axis=1).argmax())
    reference = None
    if scan.mask is not None and scan.annotated_slices is None:
        ref = prepare_volume(scan.volume, prep, scan.mask).mask
        reference = None if ref is None else ref[index]
    return overlay_png(predicted.image[index], predicted.mask[index], reference)


def _metrics_table(metrics: list[ScanScore], names: dict[uuid.UUID, str]) -> list[dict[str, Any]]:
    """One row per scan of `names`: Dice and surface Dice before and after adaptation."""
    rows: dict[uuid.UUID, dict[str, Any]] = {}
    for m in metrics:
        if m.scan_id not in names:
            continue
        row = rows.setdefault(m.scan_id, {"scan": names[m.scan_id]})
        row[f"dice_{m.phase}"] = round(m.dice, 4)
        row[f"sdice_{m.phase}"] = round(m.sdice, 4)
    return list(rows.values())


def _policy(
    result: AdaptResult, targets: list[ScanData], prep: Preprocessing
) -> PolicyRecord | None:
    """The policy on the target slices for SpotTUnet-instance, else the one recorded in training."""
    if isinstance(result.model, SpotTUNet):
        slices = [t.prepared(prep, with_mask=False) for t in targets]
        return policy_record(result.model, slices, result.method, result.lambda_reg)
    return result.policy


def run(ctx: JobContext) -> JobOutput:
    params = ctx.params_as(AdaptationParams)
    method, options = params.method, params.options
    with session_scope(ctx.session_factory) as session:
        base_row, base, config = load_stored_model(session, ctx.clinic_id, params.model_id,
                                                   ctx.device)
        train_scans = load_scans(session, ctx.clinic_id, params.train_scan_ids)
        targets = load_scans(session, ctx.clinic_id, params.target_scan_ids)
        validation_scans = load_scans(session, ctx.clinic_id, params.validation_scan_ids)
        base_id, base_name = base_row.id, base_row.name
    if not isinstance(base, UNet):
        raise InputError(f"model {base_id} is an instance-policy SpotTUnet; adapt its parent, "
                         "a plain U-Net, instead")
    prep = config.preprocessing
    unannotated = [s.id for s in train_scans if s.mask is None]
    if unannotated:
        raise InputError(f"train scans need a mask; scan {unannotated[0]} has none")

    validation = [v for v in validation_scans if v.mask is not None]

    def validation_sdice(candidate: AdaptResult) -> float:
        scores = [scan_metric(v, _segment(ctx, candidate.model, v, candidate.config.preprocessing)
                              .astype(bool), "after").sdice for v in validation]
        return float(np.mean(scores))

    replicates = adapt_replicates(
        base, config, [s.prepared(prep) for s in train_scans], method, options,
        scorer=validation_sdice if validation else None,
        unlabelled=[t.prepared(prep, with_mask=False) for t in targets],
        progress=ctx.ml_progress, should_stop=ctx.should_stop, device=ctx.device)
    result = replicates.result

    output = JobOutput()
    overlays: list[bytes] = []
    names = {t.id: t.label for t in targets}
    for target in targets:
        after = _segment(ctx, result.model, target, result.config.preprocessing)
        output.masks[target.id] = mask_to_nifti_bytes(after, target.volume.affine)
        if target.mask is not None and target.annotated_slices is None:
            before = _segment(ctx, base, target, prep)
            output.metrics.append(scan_metric(target, before.astype(bool), "before"))
            output.metrics.append(scan_metric(target, after.astype(bool), "after"))
        if len(overlays) < MAX_OVERLAYS:
            overlays.append(_overlay(target, after, prep))
    scored = {m.scan_id for m in output.metrics}
    for scan in validation:
        if scan.id in scored:  # also a target: already scored
            continue
        after = _segment(ctx, result.model, scan, result.config.preprocessing)
        output.metrics.append(scan_metric(scan, _segment(ctx, base, scan, prep).astype(bool),
                                          "before"))
        output.metrics.append(scan_metric(scan, after.astype(bool), "after"))
    ctx.check_stop()

    record = _policy(result, targets, prep)
    if record is not None and options.replicates > 1:
        record.replicates = replicates.summary()
    output.policy = record
    output.model = NewModel(
        name=f"{base_name}-{method}"[:200], config=json.loads(result.config.to_json()),
        weights=weights_to_bytes(result.model, result.config), method=method,
        parent_model_id=base_id)
    output.report_html = render_report_html(
        title=f"Adaptation of {base_name} ({method})", policy=record, history=result.history,
        metrics_table=_metrics_table(output.metrics, names) or None, overlays=overlays,
        validation_table=_metrics_table(output.metrics, {v.id: v.label for v in validation})
        or None,
        replicates=replicates.summary() if options.replicates > 1 else None)
    output.report_png = (policy_chart_png(record) if record is not None
                         else training_curve_png(result.history))
    return output

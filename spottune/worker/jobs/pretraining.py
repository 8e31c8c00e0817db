"""Pretraining job (:class:`spottune.contract.PretrainingParams`): a source model from scratch."""

from __future__ import annotations

import json

from spottune.contract import PretrainingParams
from spottune.core.db import session_scope
from spottune.ml.checkpoint import weights_to_bytes
from spottune.ml.config import source_model_config
from spottune.ml.report import render_report_html, training_curve_png
from spottune.ml.train import train_source
from spottune.worker.context import JobContext
from spottune.worker.jobs.inputs import InputError, load_scans
from spottune.worker.results import JobOutput, NewModel


def run(ctx: JobContext) -> JobOutput:
    params = ctx.params_as(PretrainingParams)
    options = params.options
    prep = source_model_config(options).preprocessing
    with session_scope(ctx.session_factory) as session:
        scans = load_scans(session, ctx.clinic_id, params.train_scan_ids)
    unannotated = [s.id for s in scans if s.mask is None]
    if unannotated:
        raise InputError(f"train scans need a mask; scan {unannotated[0]} has none")
    result = train_source([s.prepared(prep) for s in scans], options, progress=ctx.ml_progress,
                          should_stop=ctx.should_stop, device=ctx.device)
    sites = sorted({s.site for s in scans if s.site})
    name = f"source-{'+'.join(sites) or 'model'}-w{options.width}d{options.depth}"
    return JobOutput(
        model=NewModel(name=name[:200], config=json.loads(result.config.to_json()),
                       weights=weights_to_bytes(result.model, result.config), method=result.method,
                       parent_model_id=None),
        report_html=render_report_html(title=f"Pretraining of {name}", policy=None,
                                       history=result.history, metrics_table=None, overlays=[]),
        report_png=training_curve_png(result.history),
    )

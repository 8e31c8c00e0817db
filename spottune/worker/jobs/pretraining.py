"""Pretraining job: ``{train_scan_ids, options}`` -> a source model trained from scratch."""

from __future__ import annotations

import json

from spottune.app.db import session_scope
from spottune.ml.checkpoint import weights_to_bytes
from spottune.ml.report import render_report_html, training_curve_png
from spottune.ml.train import SourceOptions, train_source
from spottune.worker.jobs.inputs import InputError, load_scans
from spottune.worker.results import JobOutput, NewModel
from spottune.worker.runner import JobContext


def run(ctx: JobContext) -> JobOutput:
    options = SourceOptions(**(ctx.params.get("options") or {}))
    prep = options.to_model_config().preprocessing
    with session_scope(ctx.session_factory) as session:
        scans = load_scans(session, ctx.clinic_id, ctx.params["train_scan_ids"])
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

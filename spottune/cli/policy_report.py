"""``spottune policy-report``: which U-Net blocks a learned policy fine-tunes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spottune.cli.console import console, user_errors
from spottune.contract import PolicyRecord, PolicyReport


def policy_report(
    policy_json: Annotated[
        Path, typer.Argument(help="OUT.policy.json written by `spottune adapt`.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Chart PNG (default: beside the JSON); NAME.summary.json written beside it."
        ),
    ] = None,
) -> None:
    """Chart of which U-Net blocks the learned policy fine-tunes, and a per-stage summary.

    The summary has the shape of the API's ``GET /v1/jobs/{id}/policy``.
    """
    from spottune.ml.report import policy_chart_png

    with user_errors():
        data = json.loads(policy_json.read_text())
        data = data.get("policy", data) if "gate_names" not in data else data
        if not data:
            raise ValueError(f"{policy_json} holds no policy (only --method spottune learns one)")
        record = PolicyRecord(**data)
        png = out or policy_json.with_suffix(".png")
        png.write_bytes(policy_chart_png(record))
        summary_path = png.with_name(png.stem + ".summary.json")
        summary_path.write_text(PolicyReport.from_record(record).model_dump_json(indent=1))
    console.print(f"wrote {png} and {summary_path}")

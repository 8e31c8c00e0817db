"""The ML core from a shell: train-source, adapt, segment, evaluate, policy-report."""

from __future__ import annotations

import typer

from spottune.cli.inference import evaluate, segment
from spottune.cli.policy_report import policy_report
from spottune.cli.training import adapt, train_source


def register(app: typer.Typer) -> None:
    """Add the ML commands to the `spottune` application."""
    for command in (train_source, adapt, segment, evaluate, policy_report):
        app.command(name=command.__name__.replace("_", "-"))(command)

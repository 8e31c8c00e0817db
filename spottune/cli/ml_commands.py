"""Placeholder until this part of the command line is written."""

import typer


def register(app: typer.Typer) -> None:
    return None


admin_app = typer.Typer()

"""Placeholder until this part of the command line is written."""

import typer

data_app = typer.Typer()

"""The `spottune` command line: one typer application assembled from its parts."""

from __future__ import annotations

import logging

import typer

from spottune.cli import client_commands, data_commands, ml_commands, service_commands

app = typer.Typer(
    name="spottune",
    help="Adapt a brain-MRI segmentation U-Net to a new scanner with SpotTUnet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


ml_commands.register(app)
service_commands.register(app)
app.add_typer(data_commands.data_app, name="data", help="Build the multi-site benchmark data.")
app.add_typer(service_commands.admin_app, name="admin", help="Operator commands: clinics and keys.")
app.add_typer(
    client_commands.client_app, name="client",
    help="Talk to a running service (SPOTTUNE_URL, SPOTTUNE_API_KEY): upload, adapt, wait, ...",
)

if __name__ == "__main__":
    app()

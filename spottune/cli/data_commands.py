"""`spottune data ...`: build the multi-site benchmark data from registry heads."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from spottune.data.fetch import HEAD_NAMES, FetchError, default_cache_dir
from spottune.data.prepare import FULL_SPACING_MM, QUICK_SPACING_MM, PrepareOptions, prepare
from spottune.data.sites import SITE_NAMES, get_site

data_app = typer.Typer(no_args_is_help=True)

QUICK_SUBJECTS_PER_HEAD = 2


@data_app.callback()
def _data() -> None:
    """Build the multi-site benchmark data."""


@data_app.command("prepare")
def prepare_command(
    out: Path = typer.Option(
        Path("data/bench"), "--out", help="Output directory (manifest.json + scans)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives byte-identical files."),
    subjects_per_head: int | None = typer.Option(
        None,
        "--subjects-per-head",
        min=1,
        help="Subjects per head and site (default 4; 2 with --quick).",
    ),
    sites: str = typer.Option(
        ",".join(SITE_NAMES), "--sites", help="Comma-separated site profiles."
    ),
    quick: bool = typer.Option(
        False, "--quick", help=f"Tiny version: {QUICK_SPACING_MM:g} mm voxels, for tests."
    ),
    source: str = typer.Option(
        "registry",
        "--source",
        help="'registry' (real heads, downloaded once) or 'synthetic' (phantoms).",
    ),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help=f"Download cache (default {default_cache_dir()})."
    ),
    workers: int = typer.Option(
        min(2, os.cpu_count() or 1),
        "--workers",
        min=1,
        help="Worker processes (output is the same).",
    ),
) -> None:
    """Fetch the three heads, make subjects and sites; write scans, masks and manifest.json."""
    if source not in ("registry", "synthetic"):
        raise typer.BadParameter("use 'registry' or 'synthetic'", param_hint="--source")
    site_names = tuple(name.strip() for name in sites.split(",") if name.strip())
    for name in site_names:
        try:
            get_site(name)
        except KeyError as error:
            raise typer.BadParameter(str(error.args[0]), param_hint="--sites") from error
    if not site_names:
        raise typer.BadParameter("name at least one site", param_hint="--sites")
    per_head = subjects_per_head or (QUICK_SUBJECTS_PER_HEAD if quick else 4)
    options = PrepareOptions(
        out=out,
        seed=seed,
        subjects_per_head=per_head,
        sites=site_names,
        spacing_mm=QUICK_SPACING_MM if quick else FULL_SPACING_MM,
        source=source,  # type: ignore[arg-type]
        cache_dir=cache_dir,
        workers=workers,
    )
    total = len(site_names) * per_head * len(HEAD_NAMES)
    with typer.progressbar(length=total, label="scans") as bar:
        last = [0]

        def advance(done: int, _: int) -> None:
            bar.update(done - last[0])
            last[0] = done

        try:
            manifest = prepare(options, progress=advance)
        except FetchError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from error
    typer.echo(f"wrote {manifest}")

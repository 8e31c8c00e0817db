"""What the ML commands share: the console, one-line user errors, progress bars, file pairs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from spottune.data.manifest import ManifestError
from spottune.ml.checkpoint import CheckpointError
from spottune.ml.config import ConfigError
from spottune.ml.loop import Progress as TrainingProgress
from spottune.ml.volumes import SUFFIXES, VolumeError

log = logging.getLogger(__name__)
console = Console(stderr=True)

Images = Annotated[list[Path], typer.Option("--image", help="Image (.nii/.nii.gz/.mgz); repeat.")]
Masks = Annotated[
    list[Path],
    typer.Option("--mask", help="Binary mask for the --image at the same position; repeat."),
]
Device = Annotated[
    str | None, typer.Option(help="torch device, e.g. cpu or cuda (default: cuda if available).")
]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn errors a user can cause into one red line and exit code 2."""
    try:
        yield
    except (VolumeError, CheckpointError, ConfigError, ManifestError, ValueError,
            OSError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error


def compute_process() -> None:
    """This process trains or infers: keep large freed tensors for reuse (see keep_freed_memory)."""
    from spottune.ml.device import keep_freed_memory

    keep_freed_memory()


def stem(path: Path) -> str:
    """The file name without its volume or zip suffix (``a.nii.gz`` -> ``a``)."""
    name = path.name
    for suffix in (*SUFFIXES, ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def training_callback(bar: Progress, task: TaskID) -> Callable[[TrainingProgress], None]:
    def update(p: TrainingProgress) -> None:
        info = f"loss {p.loss:.4f}" if p.loss is not None else ""
        bar.update(task, completed=p.step, total=p.total, info=info)

    return update


def advance(bar: Progress, task: TaskID, done: int, total: int) -> None:
    bar.update(task, completed=done, total=total)


def pairs(images: Sequence[Path], masks: Sequence[Path]) -> list[tuple[Path, Path]]:
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} --image but {len(masks)} --mask; give one mask per image")
    return list(zip(images, masks, strict=True))

"""The ML core from a shell: train-source, adapt, segment, evaluate, policy-report."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from spottune.cli.dicom_io import OutFormat, read_input, write_output
from spottune.ml.checkpoint import CheckpointError, load_model, save_checkpoint
from spottune.ml.config import ConfigError, ModelConfig, Preprocessing
from spottune.ml.inference import segment_volume
from spottune.ml.metrics import dice, hausdorff95, surface_dice
from spottune.ml.volumes import (
    SUFFIXES,
    PreparedVolume,
    VolumeError,
    load_mask,
    load_volume,
    prepare_volume,
    slice_voxel_axis,
)

log = logging.getLogger(__name__)
console = Console(stderr=True)

Method = Literal["spottune", "finetune-all", "finetune-first", "finetune-last", "none"]
Images = Annotated[list[Path], typer.Option("--image", help="Image (.nii/.nii.gz/.mgz); repeat.")]
Masks = Annotated[
    list[Path],
    typer.Option("--mask", help="Binary mask for the --image at the same position; repeat."),
]
Device = Annotated[
    str | None, typer.Option(help="torch device, e.g. cpu or cuda (default: cuda if available).")
]


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn errors a user can cause into one red line and exit code 2."""
    try:
        yield
    except (VolumeError, CheckpointError, ConfigError, ValueError, OSError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error


def _compute_process() -> None:
    """This process trains or infers: keep large freed tensors for reuse (see keep_freed_memory)."""
    from spottune.ml.device import keep_freed_memory

    keep_freed_memory()


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*SUFFIXES, ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _train_callback(bar: Progress, task: Any) -> Any:
    def update(p: Any) -> None:
        info = f"loss {p.loss:.4f}" if p.loss is not None else ""
        bar.update(task, completed=p.step, total=p.total, info=info)

    return update


def _advance(bar: Progress, task: TaskID, done: int, total: int) -> None:
    bar.update(task, completed=done, total=total)


def _pairs(images: Sequence[Path], masks: Sequence[Path]) -> list[tuple[Path, Path]]:
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} --image but {len(masks)} --mask; give one mask per image")
    return list(zip(images, masks, strict=True))


def _from_manifest(manifest: Path, site: str) -> list[tuple[Path, Path]]:
    data = json.loads(manifest.read_text())
    scans = [s for s in data.get("scans", []) if s.get("site") == site]
    if not scans:
        sites = sorted({s.get("site") for s in data.get("scans", [])})
        raise ValueError(f"no scans of site {site!r} in {manifest}; sites: {', '.join(sites)}")
    return [(manifest.parent / s["image"], manifest.parent / s["mask"]) for s in scans]


def _annotated(n_slices: int, spec: str | None, every_k: int | None) -> list[int] | None:
    """Slice indices from "0,5,10", or every k-th of `n_slices`, or None (all slices)."""
    if spec is not None:
        try:
            return [int(part) for part in spec.split(",") if part.strip()]
        except ValueError as error:
            raise ValueError(
                f"--annotated-slices must be comma-separated integers, got {spec!r}"
            ) from error
    if every_k is not None:
        return list(range(0, n_slices, every_k))
    return None


def _prepare_labelled(
    pairs: Sequence[tuple[Path, Path]],
    prep: Preprocessing,
    annotated: Sequence[str] = (),
    every_k: int | None = None,
) -> list[PreparedVolume]:
    if annotated and len(annotated) != len(pairs):
        raise ValueError(
            f"{len(annotated)} --annotated-slices for {len(pairs)} scans; give one per scan"
        )
    prepared = []
    for index, (image_path, mask_path) in enumerate(pairs):
        volume = load_volume(image_path)
        mask = load_mask(mask_path, volume)
        axis_len = volume.shape[slice_voxel_axis(volume, prep)]
        chosen = _annotated(axis_len, annotated[index] if annotated else None, every_k)
        prepared.append(prepare_volume(volume, prep, mask, chosen))
    return prepared


def train_source(
    out: Annotated[
        Path, typer.Option(help="Output weights (.safetensors); config JSON written beside.")
    ],
    image: Images = [],  # noqa: B006 - typer reads list defaults, never mutates them
    mask: Masks = [],  # noqa: B006
    manifest: Annotated[
        Path | None, typer.Option(help="manifest.json from `spottune data prepare`.")
    ] = None,
    site: Annotated[str | None, typer.Option(help="Site of the manifest to train on.")] = None,
    width: Annotated[int, typer.Option(help="Filters at the top of the U-Net.")] = 16,
    depth: Annotated[int, typer.Option(help="Number of downsamplings.")] = 3,
    blocks: Annotated[int, typer.Option(help="ResBlocks per stage.")] = 3,
    spacing: Annotated[
        tuple[float, float], typer.Option(help="In-plane spacing, mm (rows cols).")
    ] = (0.95, 0.95),
    patch: Annotated[
        int, typer.Option(help="Training patch side, pixels (multiple of 2**depth).")
    ] = 128,
    iterations: Annotated[int, typer.Option(help="Training steps.")] = 1000,
    batch: Annotated[int, typer.Option(help="Patches per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Learning rate (SGD Nesterov).")] = 1e-3,
    seed: int = 0,
    device: Device = None,
) -> None:
    """Train a source U-Net from scratch on fully annotated scans."""
    from spottune.ml.train import SourceOptions
    from spottune.ml.train import train_source as run

    _compute_process()
    with _user_errors():
        if manifest is not None:
            if site is None:
                raise ValueError("--manifest needs --site")
            pairs = _from_manifest(manifest, site)
        else:
            pairs = _pairs(image, mask)
        if not pairs:
            raise ValueError("give --image/--mask pairs or --manifest with --site")
        options = SourceOptions(
            width=width,
            depth=depth,
            blocks_per_stage=blocks,
            spacing_mm=spacing,
            patch_size=patch,
            iterations=iterations,
            batch_size=batch,
            learning_rate=lr,
            seed=seed,
        )
        train = _prepare_labelled(pairs, options.to_model_config().preprocessing)
        with _progress() as bar:
            task = bar.add_task("train-source", total=iterations, info="")
            result = run(train, options, progress=_train_callback(bar, task), device=device)
        save_checkpoint(result.model, result.config, out)
    console.print(f"wrote {out} and {out.with_suffix('.json')} ({len(train)} scans)")


def adapt(
    model: Annotated[Path, typer.Option(help="Source weights (.safetensors).")],
    out: Annotated[
        Path,
        typer.Option(
            help="Adapted weights (.safetensors); OUT.json config and OUT.policy.json beside."
        ),
    ],
    image: Images = [],  # noqa: B006
    mask: Masks = [],  # noqa: B006
    method: Annotated[Method, typer.Option(help="Which layers to fine-tune.")] = "spottune",
    config: Annotated[
        Path | None, typer.Option(help="Model config JSON (default: from the weights).")
    ] = None,
    annotated_slices: Annotated[
        list[str],
        typer.Option(help='Annotated slice indices per scan, e.g. "0,5,10"; repeat per --image.'),
    ] = [],  # noqa: B006
    every_k: Annotated[
        int | None, typer.Option(help="Use every k-th slice of each scan as annotated.", min=1)
    ] = None,
    unlabelled: Annotated[
        list[Path], typer.Option(help="Unlabelled target image for AdaBN; repeat.")
    ] = [],  # noqa: B006
    policy: Annotated[
        Literal["instance", "global"], typer.Option(help="SpotTUnet policy: per slice or global.")
    ] = "instance",
    lambda_: Annotated[
        float | None, typer.Option("--lambda", help="Regulariser weight (default: paper's table).")
    ] = None,
    iterations: Annotated[int, typer.Option(help="Fine-tuning steps.")] = 600,
    batch: Annotated[int, typer.Option(help="Patches per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    patch: Annotated[
        int | None, typer.Option(help="Patch side, pixels (default: whole slices).")
    ] = None,
    adabn: Annotated[
        bool, typer.Option(help="Re-estimate BatchNorm statistics on target images first.")
    ] = False,
    seed: int = 0,
    device: Device = None,
) -> None:
    """Adapt a source model to a new scanner from a few annotated target slices."""
    from spottune.ml.network import UNet
    from spottune.ml.train import METHODS, AdaptOptions
    from spottune.ml.train import adapt as run

    _compute_process()
    with _user_errors():
        if method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}")
        given = ModelConfig.from_json(config.read_text()) if config is not None else None
        base, model_config = load_model(model, given)
        if not isinstance(base, UNet):
            raise ValueError("--model must be a plain U-Net (a source model), not a SpotTUNet")
        prep = model_config.preprocessing
        pairs = _pairs(image, mask)
        if not pairs and method != "none":
            raise ValueError(f"--method {method} needs at least one --image/--mask pair")
        train = _prepare_labelled(pairs, prep, annotated_slices, every_k)
        extra = [prepare_volume(load_volume(p), prep) for p in unlabelled]
        options = AdaptOptions(
            iterations=iterations,
            batch_size=batch,
            learning_rate=lr,
            lambda_reg=lambda_,
            policy=policy,
            adabn=adabn,
            seed=seed,
            patch_size=patch,
        )
        with _progress() as bar:
            task = bar.add_task(f"adapt ({method})", total=iterations, info="")
            result = run(
                base,
                model_config,
                train,
                method,
                options,
                unlabelled=extra,
                progress=_train_callback(bar, task),
                device=device,
            )
        save_checkpoint(result.model, result.config, out)
        policy_path = out.with_suffix(".policy.json")
        summary = {
            "method": method,
            "lambda_reg": result.lambda_reg,
            "annotated_slices": int(sum(int(v.annotated.sum()) for v in train)),
            "policy": result.policy.to_dict() if result.policy else None,
            "history": result.history,
        }
        policy_path.write_text(json.dumps(summary, indent=1))
    console.print(f"wrote {out}, {out.with_suffix('.json')} and {policy_path}")


def segment(
    images: Annotated[
        list[Path],
        typer.Argument(help="Images to segment (.nii/.nii.gz/.mgz, or a DICOM series: a folder "
                       "or .zip of one MR series)."),
    ],
    model: Annotated[Path, typer.Option(help="Weights (.safetensors).")],
    out_dir: Annotated[
        Path, typer.Option(help="Folder for NAME_mask.nii.gz (or NAME_seg.dcm) files.")
    ],
    out_format: Annotated[
        OutFormat,
        typer.Option(help="nifti, or dicom-seg: a DICOM SEG on a DICOM input's own frames."),
    ] = "nifti",
    batch: Annotated[int, typer.Option(help="Slices per forward pass.")] = 32,
    bf16: Annotated[
        bool, typer.Option(help="BF16 autocast (faster on AVX-512 BF16 CPUs and GPUs).")
    ] = False,
    largest_component: Annotated[
        bool, typer.Option(help="Keep only the largest 3D component.")
    ] = True,
    device: Device = None,
) -> None:
    """Segment scans; each mask is written on its input's own voxel grid (or series' frames)."""
    from spottune.ml.device import pick_device

    _compute_process()
    with _user_errors():
        torch_device = pick_device(device)
        net, config = load_model(model, device=torch_device)
        out_dir.mkdir(parents=True, exist_ok=True)
        with _progress() as bar:
            for path in images:
                volume, series = read_input(path, out_format)
                task = bar.add_task(path.name, total=None, info="")
                result = segment_volume(
                    net,
                    volume,
                    config.preprocessing,
                    batch_size=batch,
                    device=torch_device,
                    largest_component=largest_component,
                    bf16=bf16,
                    progress=partial(_advance, bar, task),
                )
                target = write_output(
                    result, volume, series, out_format, out_dir, _stem(path)
                )
                console.print(f"{path.name} -> {target} ({int(result.sum())} voxels)")


def evaluate(
    mask: Annotated[list[Path], typer.Option("--mask", help="Predicted mask; repeat.")],
    reference: Annotated[
        list[Path],
        typer.Option(
            "--reference", help="Reference mask for the --mask at the same position; repeat."
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="Write the metrics as JSON here.")] = None,
    tolerance: Annotated[float, typer.Option(help="Surface Dice tolerance, mm.")] = 1.0,
) -> None:
    """Dice, surface Dice and HD95 (mm) per scan and their mean (HD95 inf: one mask empty)."""
    with _user_errors():
        rows = []
        for pred_path, ref_path in _pairs(mask, reference):
            ref_volume = load_volume(ref_path)
            ref = load_mask(ref_path, ref_volume)
            pred = load_mask(pred_path, ref_volume)
            spacing = ref_volume.spacing
            rows.append(
                {
                    "scan": _stem(pred_path),
                    "dice": dice(pred, ref),
                    "sdice": surface_dice(pred, ref, spacing, tolerance),
                    "hd95": hausdorff95(pred, ref, spacing),
                }
            )
    mean = {key: float(np.mean([r[key] for r in rows])) for key in ("dice", "sdice", "hd95")}
    table = Table("scan", "Dice", f"sDice@{tolerance:g}mm", "HD95 mm")
    for row in [*rows, {"scan": "mean", **mean}]:
        table.add_row(
            str(row["scan"]), f"{row['dice']:.4f}", f"{row['sdice']:.4f}", f"{row['hd95']:.2f}"
        )
    Console().print(table)
    if out is not None:
        out.write_text(
            json.dumps({"tolerance_mm": tolerance, "scans": rows, "mean": mean}, indent=1)
        )


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
    """Chart of which U-Net blocks the learned policy fine-tunes, and a per-stage summary."""
    from spottune.ml.readout import PolicyRecord
    from spottune.ml.report import policy_chart_png

    with _user_errors():
        data = json.loads(policy_json.read_text())
        data = data.get("policy", data) if "gate_names" not in data else data
        if not data:
            raise ValueError(f"{policy_json} holds no policy (only --method spottune learns one)")
        record = PolicyRecord(**data)
        png = out or policy_json.with_suffix(".png")
        png.write_bytes(policy_chart_png(record))
        stages: dict[str, list[float]] = {}
        for stage, p in zip(record.gate_stages, record.probability, strict=True):
            stages.setdefault(stage, []).append(p)
        summary = {
            "stage_mean_probability": {s: float(np.mean(v)) for s, v in stages.items()},
            "finetuned_gates": [
                n for n, f in zip(record.gate_names, record.frequency, strict=True) if f >= 0.5
            ],
            "method": record.method,
            "policy": record.policy,
            "lambda_reg": record.lambda_reg,
        }
        summary_path = png.with_name(png.stem + ".summary.json")
        summary_path.write_text(json.dumps(summary, indent=1))
    console.print(f"wrote {png} and {summary_path}")


def register(app: typer.Typer) -> None:
    """Add the ML commands to the `spottune` application."""
    for command in (train_source, adapt, segment, evaluate, policy_report):
        app.command(name=command.__name__.replace("_", "-"))(command)

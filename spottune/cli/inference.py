"""``spottune segment`` and ``spottune evaluate``: masks from a model, and their scores."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from spottune.cli.console import (
    Device,
    advance,
    compute_process,
    console,
    pairs,
    progress_bar,
    stem,
    user_errors,
)
from spottune.cli.contract_options import parse_options, with_options
from spottune.cli.dicom_io import OutFormat, read_input, write_output
from spottune.contract import SegmentationOptions
from spottune.ml.checkpoint import load_model
from spottune.ml.inference import Engine, check_engine, segment_volume
from spottune.ml.volumes import load_mask, load_volume


@with_options(SegmentationOptions)
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
    bf16: Annotated[
        bool,
        typer.Option(help="BF16 inference: ~2x faster where the CPU (AVX-512 BF16, AMX) or GPU "
                          "runs it natively; masks agree with FP32 to Dice 0.996-0.9998 "
                          "(bench/speed.py), FP32 masks are exact."),
    ] = False,
    engine: Annotated[
        Engine,
        typer.Option(help="auto: OpenVINO for a plain U-Net on the CPU in FP32 (the same masks, "
                          "~1.3x faster), torch otherwise; torch; openvino: plain U-Nets only, "
                          "also in BF16 (~1.6x faster than torch, further from FP32)."),
    ] = "auto",
    device: Device = None,
    **flags: Any,
) -> None:
    """Segment scans; each mask is written on its input's own voxel grid (or series' frames)."""
    from spottune.ml.device import pick_device

    compute_process()
    with user_errors():
        options = parse_options(SegmentationOptions, flags)
        torch_device = pick_device(device)
        net, config = load_model(model, device=torch_device)
        check_engine(net, torch_device, engine, bf16)  # refused before any file is written
        out_dir.mkdir(parents=True, exist_ok=True)
        with progress_bar() as bar:
            for path in images:
                volume, series = read_input(path, out_format)
                task = bar.add_task(path.name, total=None, info="")
                result = segment_volume(
                    net,
                    volume,
                    config.preprocessing,
                    batch_size=options.batch_size,
                    device=torch_device,
                    largest_component=options.largest_component,
                    bf16=bf16,
                    engine=engine,
                    progress=partial(advance, bar, task),
                )
                target = write_output(result, volume, series, out_format, out_dir, stem(path))
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
    # Imported here: scipy.spatial costs ~0.2 s of every `spottune segment` process otherwise.
    from spottune.ml.metrics import score_masks

    with user_errors():
        rows: list[dict[str, Any]] = []
        for pred_path, ref_path in pairs(mask, reference):
            ref_volume = load_volume(ref_path)
            ref = load_mask(ref_path, ref_volume)
            pred = load_mask(pred_path, ref_volume)
            score = score_masks(pred, ref, ref_volume.spacing, tolerances_mm=(tolerance,))
            rows.append({"scan": stem(pred_path), "dice": score.dice,
                         "sdice": score.surface_dice[tolerance], "hd95": score.hd95})
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



"""``spottune train-source`` and ``spottune adapt``: training from a shell.

Their training flags are the job contract's options (see :mod:`spottune.cli.contract_options`):
the same names, defaults and bounds as the API's pretraining and adaptation options.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from spottune.cli.console import (
    Device,
    Images,
    Masks,
    compute_process,
    console,
    pairs,
    progress_bar,
    training_callback,
    user_errors,
)
from spottune.cli.contract_options import parse_options, with_options
from spottune.contract import AdaptationOptions, Method, PretrainingOptions
from spottune.data.manifest import read_manifest
from spottune.ml.checkpoint import load_model, save_checkpoint
from spottune.ml.config import ModelConfig, Preprocessing, source_model_config
from spottune.ml.preparation import PreparedVolume, prepare_volume, slice_voxel_axis
from spottune.ml.volumes import load_mask, load_volume


def _from_manifest(manifest: Path, site: str) -> list[tuple[Path, Path]]:
    data = read_manifest(manifest)
    return [(data.image_path(s), data.mask_path(s)) for s in data.scans_of(site)]


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
    scans: Sequence[tuple[Path, Path]],
    prep: Preprocessing,
    annotated: Sequence[str] = (),
    every_k: int | None = None,
) -> list[PreparedVolume]:
    if annotated and len(annotated) != len(scans):
        raise ValueError(
            f"{len(annotated)} --annotated-slices for {len(scans)} scans; give one per scan"
        )
    prepared = []
    for index, (image_path, mask_path) in enumerate(scans):
        volume = load_volume(image_path)
        mask = load_mask(mask_path, volume)
        axis_len = volume.shape[slice_voxel_axis(volume, prep)]
        chosen = _annotated(axis_len, annotated[index] if annotated else None, every_k)
        prepared.append(prepare_volume(volume, prep, mask, chosen))
    return prepared


@with_options(PretrainingOptions)
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
    device: Device = None,
    **flags: Any,
) -> None:
    """Train a source U-Net from scratch on fully annotated scans."""
    from spottune.ml.train import train_source as run

    compute_process()
    with user_errors():
        options = parse_options(PretrainingOptions, flags)
        if manifest is not None:
            if site is None:
                raise ValueError("--manifest needs --site")
            scans = _from_manifest(manifest, site)
        else:
            scans = pairs(image, mask)
        if not scans:
            raise ValueError("give --image/--mask pairs or --manifest with --site")
        train = _prepare_labelled(scans, source_model_config(options).preprocessing)
        with progress_bar() as bar:
            task = bar.add_task("train-source", total=options.iterations, info="")
            result = run(train, options, progress=training_callback(bar, task), device=device)
        save_checkpoint(result.model, result.config, out)
    console.print(f"wrote {out} and {out.with_suffix('.json')} ({len(train)} scans)")


@with_options(AdaptationOptions)
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
    method: Annotated[Method, typer.Option(help="Which blocks are fine-tuned.")] = "spottune",
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
    device: Device = None,
    **flags: Any,
) -> None:
    """Adapt a source model to a new scanner from a few annotated target slices."""
    from spottune.ml.network import UNet
    from spottune.ml.train import adapt as run

    compute_process()
    with user_errors():
        options = parse_options(AdaptationOptions, flags)
        given = ModelConfig.from_json(config.read_text()) if config is not None else None
        base, model_config = load_model(model, given)
        if not isinstance(base, UNet):
            raise ValueError("--model must be a plain U-Net (a source model), not a SpotTUNet")
        prep = model_config.preprocessing
        scans = pairs(image, mask)
        if not scans and method != "none":
            raise ValueError(f"--method {method} needs at least one --image/--mask pair")
        train = _prepare_labelled(scans, prep, annotated_slices, every_k)
        extra = [prepare_volume(load_volume(p), prep) for p in unlabelled]
        with progress_bar() as bar:
            task = bar.add_task(f"adapt ({method})", total=options.iterations, info="")
            result = run(base, model_config, train, method, options, unlabelled=extra,
                         progress=training_callback(bar, task), device=device)
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

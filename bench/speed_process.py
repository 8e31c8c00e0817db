"""Speed benchmark, whole processes: `spottune segment` against deepbet on whole 1 mm heads.

What a clinic compares: a command that reads a NIfTI head and writes its brain mask, timed from
process start to exit (imports, model loading, reading, inference, writing). deepbet is an
off-the-shelf brain extractor (a 3D model that locates the brain at low resolution, then segments
its box); it lives in the benchmark's own environment (bench/.deepbet-venv, made on first use with
the same torch as the project), never in the project's. The runs alternate (ours, deepbet, ours,
...) so both see the same machine, and the medians are compared in the same run.

Masks are scored against the scans' reference masks too, for context only: our model here is the
speed benchmark's briefly trained U-Net, not a tuned brain extractor.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np

from spottune.data.manifest import read_manifest
from spottune.ml.metrics import dice
from spottune.ml.volumes import load_mask, load_volume

log = logging.getLogger("bench.speed")
ROOT = Path(__file__).resolve().parent.parent
DEEPBET = "deepbet==1.0.2"
TORCH = "torch==2.13.0"


def deepbet_cli(env_dir: Path) -> tuple[Path | None, str]:
    """The deepbet-cli of the benchmark's own environment, made if missing; (None, why) if not."""
    cli = env_dir / "bin" / "deepbet-cli"
    if cli.is_file():
        return cli, "present"
    log.info("making %s with %s and %s", env_dir, TORCH, DEEPBET)
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, TORCH], check=True, capture_output=True, timeout=900)
        subprocess.run([*pip, DEEPBET], check=True, capture_output=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return None, f"could not install deepbet: {exc} {detail.decode(errors='replace')[-300:]}"
    return (cli, "installed") if cli.is_file() else (None, "deepbet-cli missing after install")


def _run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=900,
                   env=os.environ | {"PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - start


def bench_processes(
    data_dir: Path, checkpoint: Path, repeats: int, env_dir: Path, n_scans: int = 3,
    bf16: bool = True,
) -> dict[str, Any]:
    """Whole-process times of `spottune segment` (FP32, its default, and with `--bf16` where the
    CPU runs BF16 natively; FP32 in the default engine, OpenVINO, and in torch; BF16 in the
    default, torch, and in OpenVINO) and deepbet on `n_scans` 1 mm heads."""
    manifest = read_manifest(data_dir)
    heads = []
    for scan in manifest.scans_of(manifest.scans[0].site):  # the reference site: 1 mm heads
        if scan.head not in {h.head for h in heads}:
            heads.append(scan)
    heads = heads[:n_scans]
    cli, how = deepbet_cli(env_dir)
    script = Path(sys.executable).with_name("spottune")  # the console script a user runs
    spottune = ([str(script), "segment"] if script.is_file()
                else [sys.executable, "-m", "spottune.cli.main", "segment"])
    ours_flags = {"spottune segment": [], "spottune segment --engine torch": ["--engine", "torch"]}
    if bf16:
        ours_flags |= {"spottune segment --bf16": ["--bf16"],
                       "spottune segment --bf16 --engine openvino": ["--bf16", "--engine",
                                                                     "openvino"]}
    out = Path(tempfile.mkdtemp(prefix="spottune-speed-"))
    rows: list[dict[str, Any]] = []
    times: dict[str, list[float]] = {**{tool: [] for tool in ours_flags}, "deepbet": []}
    for scan in heads:
        image = manifest.image_path(scan)
        commands = {
            tool: [*spottune, str(image), "--model", str(checkpoint), "--out-dir",
                   str(out / f"ours{i}"), *flags]
            for i, (tool, flags) in enumerate(ours_flags.items())
        }
        if cli:
            commands["deepbet"] = [str(cli), "-i", str(image), "-o", str(out / "brain.nii.gz"),
                                   "-m", str(out / f"{scan.id}_deepbet.nii.gz"), "--no_gpu"]
        for command in commands.values():  # warm the page cache and each environment once
            _run(command)
        for _ in range(repeats):  # alternating, so every tool sees the same machine
            for tool, command in commands.items():
                times[tool].append(_run(command))
        volume = load_volume(image)
        reference = load_mask(manifest.mask_path(scan), volume).astype(np.uint8)
        found = {tool: load_mask(out / f"ours{i}" / f"{scan.id}_mask.nii.gz", volume)
                 for i, tool in enumerate(ours_flags)}
        if cli:
            found["deepbet"] = load_mask(out / f"{scan.id}_deepbet.nii.gz", volume)
        for tool, mask in found.items():
            rows.append({"tool": tool, "scan": scan.id, "shape": list(volume.shape),
                         "dice_vs_reference": round(dice(mask, reference), 4)})
    summary: dict[str, Any] = {
        tool: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
               "max_s": round(max(t), 3), "runs": len(t)}
        for tool, t in times.items() if t
    }
    if "deepbet" in summary:
        summary["ratio_to_deepbet"] = {
            tool: round(summary[tool]["median_s"] / summary["deepbet"]["median_s"], 3)
            for tool in ours_flags
        }
    result = {"scans": [s.id for s in heads], "repeats_per_scan": repeats,
              "commands": {tool: " ".join(["spottune segment IMAGE --model MODEL --out-dir DIR",
                                           *flags]) for tool, flags in ours_flags.items()},
              "deepbet": {"package": DEEPBET, "environment": str(env_dir), "status": how},
              "model": str(checkpoint), "summary": summary, "masks": rows}
    log.info("whole processes: %s", json.dumps(summary))
    return result

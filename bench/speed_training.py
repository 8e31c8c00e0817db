"""Speed benchmark, training: one real training step per method and patch size."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from speed_timing import timed
from torch import nn

from spottune.ml.baselines import finetuned_units, freeze_except, train_mode_except
from spottune.ml.loop import autocast_dtype_for, nesterov_sgd, train_step
from spottune.ml.network import UNet
from spottune.ml.spottune import SpotTUNet

log = logging.getLogger("bench.speed")
TRAIN_METHODS = ("finetune-all", "spottune-instance", "spottune-instance:target",
                 "spottune-instance:target:unrouted", "spottune-global")
"""Steps timed; `:target` - frozen twins normalise with batch statistics (frozen_norm "target"),
so they must see the whole batch; otherwise "source" (SpotTUNet's own default). `:unrouted` - as
before routed backward passes: every slice back-propagates through both twins' every convolution
(SpotTUNet(route_backward=False)), the same-run baseline of that change."""


def make_step(
    method: str, base: UNet, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One real training step (spottune.ml.loop.train_step) set up as train.adapt does."""
    dtype = autocast_dtype_for(device)
    if method == "finetune-all":
        model: nn.Module = copy.deepcopy(base).to(device)
        freeze_except(model, finetuned_units(model, "finetune-all"))  # type: ignore[arg-type]
        train_mode_except(model, [])  # type: ignore[arg-type]
        optimizers = [nesterov_sgd([p for p in model.parameters() if p.requires_grad], 1e-3)]
        lambda_reg = 0.0
    else:
        name, _, variant = method.partition(":")
        frozen_norm, _, routing = variant.partition(":")
        policy = name.split("-", 1)[1]
        spot = SpotTUNet(base, policy, 0.1,  # type: ignore[arg-type]
                         frozen_norm=frozen_norm or "source",  # type: ignore[arg-type]
                         route_backward=routing != "unrouted").to(device)
        spot.train()
        optimizers = [
            nesterov_sgd(list(spot.trainable.parameters()), 1e-3),
            nesterov_sgd(list(spot.policy.parameters()), 0.01, 1e-3),
        ]
        model, lambda_reg = spot, 0.005

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        return train_step(
            model, x, y, optimizers=optimizers, lambda_reg=lambda_reg, autocast_dtype=dtype
        )

    return step


def time_training_step(
    method: str, size: int, device: torch.device, repeats: int, warmup: int
) -> dict[str, Any]:
    """Median seconds of one step of `method` (batch 16, size x size) on the bench's U-Net."""
    torch.manual_seed(0)
    base = UNet(1, 16, 3, 3)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((16, 1, size, size), dtype=np.float32)).to(device)
    y = (x > 0.5).float()
    step = make_step(method, base, device)
    return timed(lambda: step(x, y), device, repeats, warmup)


def _in_fresh_process(method: str, size: int, repeats: int, warmup: int) -> dict[str, Any]:
    """time_training_step on CPU in a new interpreter that never touched the allocator: glibc's
    settings cannot be put back to their defaults once changed (the dynamic mmap threshold)."""
    code = (
        "import json, sys, torch; sys.path.insert(0, sys.argv[1]); import speed_training; "
        "torch.set_num_threads(int(sys.argv[6])); "
        "print(json.dumps(speed_training.time_training_step(sys.argv[2], int(sys.argv[3]), "
        "torch.device('cpu'), int(sys.argv[4]), int(sys.argv[5]))))"
    )
    argv = [sys.executable, "-c", code, str(Path(__file__).parent), method, str(size),
            str(repeats), str(warmup), str(torch.get_num_threads())]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def bench_training(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Training steps on the default path (freed memory kept, as the CLI and the worker run) and,
    on CPU, finetune-all once more with glibc's default allocator in a fresh process ("before")."""
    rows = []
    for size in (128, 256):
        runs = [(method, "kept") for method in TRAIN_METHODS]
        if device.type == "cpu" and not quick:
            runs.insert(0, ("finetune-all", "glibc default"))
        for method, allocator in runs:
            if quick and size == 256 and "instance" in method and device.type == "cpu":
                continue
            big_cpu = size == 256 and device.type == "cpu"
            repeats = (1 if big_cpu else 3) if quick else (2 if big_cpu else 5)
            warmup = 1 if not (quick and big_cpu) else 0
            if allocator == "kept":
                result = time_training_step(method, size, device, repeats, warmup)
            else:
                result = _in_fresh_process(method, size, repeats, warmup)
            rows.append(
                {"device": device.type, "size": size, "batch": 16, "method": method,
                 "allocator": allocator, **result}
            )
            log.info("train %s %d (%s): %.3f s", method, size, allocator, result["median_s"])
    for row in rows:
        ref = next(
            r for r in rows
            if r["size"] == row["size"] and r["method"] == "finetune-all"
            and r["allocator"] == "kept"
        )
        row["vs_finetune_all"] = round(row["median_s"] / ref["median_s"], 3)
    return rows

"""What each adaptation method trains, and AdaBN re-estimation of BatchNorm statistics."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spottune.ml.network import UNet
from spottune.ml.preparation import PreparedVolume

log = logging.getLogger(__name__)

ADABN_MAX_SLICES = 512
"""AdaBN sees at most this many slices (spread evenly over the volumes): BatchNorm means and
variances are stable long before that, and it bounds the cost on large uploads."""


def finetuned_units(model: UNet, method: str) -> list[str]:
    """Gate names of the units a fixed fine-tuning method trains (all others stay frozen)."""
    names = [spec.name for spec in model.units]
    last_block = f"out.block{model.blocks_per_stage - 1}"
    if method == "finetune-all":
        return names
    if method == "finetune-first":
        return ["init.conv", "init.block0"]
    if method == "finetune-last":
        return [last_block, "out.conv", "out.norm"]
    if method == "none":
        return []
    raise ValueError(f"{method!r} is not a fixed fine-tuning method")


def freeze_except(model: UNet, units: Sequence[str]) -> None:
    """requires_grad only for the parameters of `units`."""
    model.requires_grad_(False)
    for name in units:
        model.get_submodule(name).requires_grad_(True)


def train_mode_except(model: UNet, frozen_units: Sequence[str]) -> None:
    """Train mode, but frozen units in eval mode so their BatchNorm statistics do not move."""
    model.train()
    for name in frozen_units:
        model.get_submodule(name).eval()


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _slice_batches(
    volumes: Sequence[PreparedVolume], batch_size: int, max_slices: int
) -> Iterator[np.ndarray]:
    """Batches [B, H, W] of slices, annotated or not, evenly thinned to about `max_slices`."""
    total = sum(v.image.shape[0] for v in volumes)
    stride = max(1, int(np.ceil(total / max_slices)))
    for volume in volumes:
        picked = volume.image[::stride]
        for start in range(0, picked.shape[0], batch_size):
            yield picked[start : start + batch_size]


@torch.no_grad()
def reestimate_batchnorm(
    module: nn.Module,
    volumes: Sequence[PreparedVolume],
    *,
    multiple: int,
    device: torch.device,
    batch_size: int = 16,
    max_slices: int = ADABN_MAX_SLICES,
    units: Sequence[str] | None = None,
) -> int:
    """AdaBN: replace BatchNorm running statistics in `module` by those of `volumes`.

    Statistics are reset and re-accumulated as a cumulative average (momentum=None) over forward
    passes in train mode without gradients; learned affine parameters are untouched. With `units`
    (submodule names) only those units are re-estimated and the rest of `module` runs in eval mode.
    Returns the number of slices seen. The module's train/eval mode and momenta are restored.
    """
    targets = [module] if units is None else [module.get_submodule(name) for name in units]
    norms = [norm for target in targets for norm in _batchnorms(target)]
    if not norms or not volumes:
        return 0
    was_training = module.training
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    module.eval()
    for target in targets:
        target.train()
    seen = 0
    try:
        for batch in _slice_batches(volumes, batch_size, max_slices):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))[:, None].to(device)
            pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
            module(F.pad(x, (0, pad_w, 0, pad_h)))
            seen += x.shape[0]
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        module.train(was_training)
    log.info("AdaBN: re-estimated %d BatchNorm layers on %d slices", len(norms), seen)
    return seen

"""The training loop as plain functions (dpipe style): the model is an argument, never a holder
of training state."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spottune.ml.sampling import SliceSampler
from spottune.ml.spottune import SpotTUNet

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Training stopped because should_stop() returned True."""


@dataclass
class Progress:
    """Reported after every step. loss: that step's training loss; eta_seconds: time left."""

    step: int
    total: int
    loss: float | None
    eta_seconds: float | None


ProgressCallback = Callable[[Progress], None]
StopCheck = Callable[[], bool]


def nesterov_sgd(
    params: Sequence[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.SGD:
    """The paper's optimiser: SGD, Nesterov momentum 0.9."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def step_decay(
    optimizer: torch.optim.Optimizer, iterations: int, at: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """lr x 0.1 once `at` (a fraction) of the iterations are done; stepped once per iteration."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, int(at * iterations))], 0.1)


def segmentation_loss(
    model: nn.Module, x: Tensor, y: Tensor, lambda_reg: float = 0.0
) -> Tensor:
    """Mean BCE with logits, plus for a SpotTUNet lambda * mean share of trainable-twin choices.

    x: [B, C, P, P] images; y: [B, 1, P, P] binary targets (float).
    """
    if isinstance(model, SpotTUNet):
        logits, gates = model.forward_with_gates(x)
        return F.binary_cross_entropy_with_logits(logits.float(), y) + lambda_reg * gates.mean()
    return F.binary_cross_entropy_with_logits(model(x).float(), y)


def train_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    optimizers: Sequence[torch.optim.Optimizer],
    lambda_reg: float = 0.0,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """One optimisation step on one batch; returns the loss. The model must be in train mode."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None):
        loss = segmentation_loss(model, x, y, lambda_reg)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    return float(loss.detach())


def autocast_dtype_for(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only (BF16, which needs no loss scaling); full precision on CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def run_training(
    model: nn.Module,
    sampler: SliceSampler,
    *,
    iterations: int,
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler],
    device: torch.device,
    lambda_reg: float = 0.0,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> list[dict[str, float]]:
    """Train for `iterations` batches from `sampler`; returns [{"step", "loss"}] per step.

    The caller puts the model in the wanted mode (some units may be held in eval mode).
    Raises Cancelled as soon as should_stop() returns True (checked before every step).
    """
    history: list[dict[str, float]] = []
    dtype = autocast_dtype_for(device)
    start = time.monotonic()
    for step in range(1, iterations + 1):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped at step {step - 1} of {iterations}")
        x_np, y_np = sampler.next_batch()
        x = torch.from_numpy(x_np).to(device, non_blocking=True)
        y = torch.from_numpy(y_np).to(device, non_blocking=True)
        loss = train_step(model, x, y, optimizers=optimizers, lambda_reg=lambda_reg,
                          autocast_dtype=dtype)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged: loss is {loss} at step {step}")
        for scheduler in schedulers:
            scheduler.step()
        history.append({"step": step, "loss": loss})
        elapsed = time.monotonic() - start
        if progress is not None:
            progress(Progress(step, iterations, loss, elapsed / step * (iterations - step)))
        if step % 100 == 0 or step == iterations:
            log.info("step %d/%d loss %.4f", step, iterations, loss)
    return history

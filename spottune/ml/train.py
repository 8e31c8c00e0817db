"""Adapting a source U-Net to a target domain (SpotTUnet and baselines), and source training.

Schedules follow the paper: SGD Nesterov (momentum 0.9), lr 1e-3 decayed x0.1 at 75% of the
fine-tuning iterations (80% for source training); the policy has its own SGD Nesterov, lr 0.01,
weight decay 1e-3. Loss: mean BCE with logits (+ lambda * share of trainable-twin choices).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from spottune.ml.baselines import (
    finetuned_units,
    freeze_except,
    reestimate_batchnorm,
    train_mode_except,
)
from spottune.ml.config import GatingConfig, ModelConfig, Preprocessing, SpacingMm
from spottune.ml.device import pick_device, seed_everything
from spottune.ml.loop import (
    Cancelled,
    Progress,
    ProgressCallback,
    StopCheck,
    nesterov_sgd,
    run_training,
    step_decay,
)
from spottune.ml.network import UNet, unet_from_config
from spottune.ml.readout import PolicyRecord, policy_record
from spottune.ml.sampling import SliceSampler
from spottune.ml.spottune import SpotTUNet
from spottune.ml.volumes import PreparedVolume

__all__ = [
    "METHODS", "AdaptOptions", "AdaptResult", "Cancelled", "PolicyRecord", "Progress",
    "SourceOptions", "adapt", "default_lambda", "policy_record", "train_source",
]

log = logging.getLogger(__name__)

METHODS = ("spottune", "finetune-all", "finetune-first", "finetune-last", "none")
FINETUNE_DECAY_AT = 0.75  # paper: x0.1 at epoch 45 of 60
SOURCE_DECAY_AT = 0.8  # paper: x0.1 at epoch 80 of 100

# Paper's tuned lambda by number of annotated target slices.
LAMBDA_BY_SLICES: dict[int, float] = {
    5: 0.010, 8: 0.007, 12: 0.012, 24: 0.005, 45: 0.005, 90: 0.007, 270: 0.005, 540: 0.005, 800: 0.0
}


def default_lambda(n_slices: int) -> float:
    """The paper's lambda for the budget nearest to `n_slices` (nearest on a log scale, since the
    budgets are roughly geometric)."""
    if n_slices < 1:
        raise ValueError(f"n_slices must be positive, got {n_slices}")
    nearest = min(LAMBDA_BY_SLICES, key=lambda budget: abs(math.log(n_slices / budget)))
    return LAMBDA_BY_SLICES[nearest]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdaptOptions(_Options):
    """How to adapt. Defaults are the paper's (60 epochs x 100 batches of 16)."""

    iterations: int = Field(default=6000, ge=1, le=1_000_000)
    batch_size: int = Field(default=16, ge=1, le=512)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    lambda_reg: float | None = Field(default=None, ge=0.0, le=100.0)
    """None: the paper's value for the number of annotated slices (default_lambda)."""
    policy: Literal["instance", "global"] = "instance"
    temperature: float = Field(default=0.1, gt=0.0, le=10.0)
    adabn: bool = False
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    patch_size: int | None = Field(default=None, ge=8, le=2048)
    """Side of training patches, pixels; None: whole slices (padded to the model's multiple)."""
    policy_learning_rate: float = Field(default=0.01, gt=0.0, le=1.0)
    policy_weight_decay: float = Field(default=1e-3, ge=0.0, le=1.0)


class SourceOptions(_Options):
    """Training a U-Net from scratch (source models, the oracle). Defaults are the paper's."""

    width: int = Field(default=16, ge=1, le=128)
    depth: int = Field(default=3, ge=1, le=6)
    blocks_per_stage: int = Field(default=3, ge=1, le=8)
    spacing_mm: tuple[SpacingMm, SpacingMm] = (0.95, 0.95)
    slice_axis: Literal[0, 1, 2] = 2
    patch_size: int = Field(default=256, ge=8, le=2048)
    iterations: int = Field(default=10_000, ge=1, le=1_000_000)
    batch_size: int = Field(default=16, ge=1, le=512)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    def to_model_config(self) -> ModelConfig:
        """The ModelConfig these options describe (raises if width/depth are out of range)."""
        return ModelConfig(
            width=self.width, depth=self.depth, blocks_per_stage=self.blocks_per_stage,
            preprocessing=Preprocessing(spacing_mm=self.spacing_mm, slice_axis=self.slice_axis),
        )


@dataclass
class AdaptResult:
    """model: ready for inference, in eval mode; config: the config of `model`."""

    model: nn.Module
    config: ModelConfig
    history: list[dict[str, float]]
    lambda_reg: float | None
    policy: PolicyRecord | None
    method: str

    def summary(self) -> dict[str, object]:
        return {
            "method": self.method, "lambda_reg": self.lambda_reg, "steps": len(self.history),
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "policy": asdict(self.policy) if self.policy else None,
        }


def _patch_size(requested: int | None, volumes: Sequence[PreparedVolume], multiple: int) -> int:
    if requested is not None:
        if requested % multiple:
            raise ValueError(f"patch_size must be a multiple of {multiple} for this model, "
                             f"got {requested}")
        return requested
    largest = max(max(v.image.shape[1:]) for v in volumes)
    return -(-largest // multiple) * multiple


def adapt(
    base: UNet,
    config: ModelConfig,
    train: Sequence[PreparedVolume],
    method: str,
    options: AdaptOptions,
    *,
    unlabelled: Sequence[PreparedVolume] = (),
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    device: torch.device | str | None = None,
) -> AdaptResult:
    """Adapt `base` (described by `config`, not modified) to the annotated slices of `train`.

    `unlabelled` target volumes are used only by AdaBN (with the train volumes' slices).
    Raises Cancelled if should_stop() returns True, ValueError for an unknown method or bad input.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(base, UNet) or config.gating is not None:
        raise ValueError("adapt() starts from a plain UNet and its config (gating None)")
    device = pick_device(str(device) if device is not None else None)
    seed_everything(options.seed)
    multiple = config.size_multiple

    if method == "spottune":
        return _adapt_spottune(base, config, train, options, unlabelled, progress, should_stop,
                               device)

    model = copy.deepcopy(base).to(device)
    if options.adabn:
        reestimate_batchnorm(model, [*unlabelled, *train], multiple=multiple, device=device)
    history: list[dict[str, float]] = []
    if method != "none":
        units = finetuned_units(model, method)
        freeze_except(model, units)
        frozen = [spec.name for spec in model.units if spec.name not in units]
        train_mode_except(model, frozen)
        sampler = SliceSampler(train, _patch_size(options.patch_size, train, multiple),
                               options.batch_size, options.seed)
        optimizer = nesterov_sgd([p for p in model.parameters() if p.requires_grad],
                                 options.learning_rate)
        history = run_training(
            model, sampler, iterations=options.iterations, optimizers=[optimizer],
            schedulers=[step_decay(optimizer, options.iterations, FINETUNE_DECAY_AT)],
            device=device, progress=progress, should_stop=should_stop,
        )
    model.requires_grad_(True).eval()
    plain_config = config.model_copy(update={"gating": None})
    return AdaptResult(model, plain_config, history, None, None, method)


def _adapt_spottune(
    base: UNet,
    config: ModelConfig,
    train: Sequence[PreparedVolume],
    options: AdaptOptions,
    unlabelled: Sequence[PreparedVolume],
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
    device: torch.device,
) -> AdaptResult:
    multiple = config.size_multiple
    sampler = SliceSampler(train, _patch_size(options.patch_size, train, multiple),
                           options.batch_size, options.seed)
    lambda_reg = (options.lambda_reg if options.lambda_reg is not None
                  else default_lambda(sampler.n_annotated_slices))
    if options.adabn:
        # Once, before the twins are made: both start from target-domain statistics. The frozen
        # twins then keep them (eval mode); re-estimating only the trainable twins would be a
        # no-op, since training in train mode overwrites their running statistics within ~50 steps.
        base = copy.deepcopy(base).to(device)
        reestimate_batchnorm(base, [*unlabelled, *train], multiple=multiple, device=device)
    model = SpotTUNet(base, options.policy, options.temperature).to(device)
    model.train()
    optimizer = nesterov_sgd(list(model.trainable.parameters()), options.learning_rate)
    policy_optimizer = nesterov_sgd(list(model.policy.parameters()), options.policy_learning_rate,
                                    options.policy_weight_decay)
    history = run_training(
        model, sampler, iterations=options.iterations, optimizers=[optimizer, policy_optimizer],
        schedulers=[step_decay(optimizer, options.iterations, FINETUNE_DECAY_AT)],
        device=device, lambda_reg=lambda_reg, progress=progress, should_stop=should_stop,
    )
    model.eval()
    record = policy_record(model, train, "spottune", lambda_reg)
    log.info("spottune (%s): trainable twin chosen for %.0f%% of gate decisions",
             options.policy, 100 * sum(record.frequency) / len(record.frequency))
    if options.policy == "global":
        plain = config.model_copy(update={"gating": None})
        return AdaptResult(_export_recalibrated(model, [*unlabelled, *train], multiple, device),
                           plain, history, lambda_reg, record, "spottune")
    gated = config.model_copy(
        update={"gating": GatingConfig(policy="instance", temperature=options.temperature)}
    )
    return AdaptResult(model, gated, history, lambda_reg, record, "spottune")


def train_source(
    train: Sequence[PreparedVolume],
    options: SourceOptions,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    device: torch.device | str | None = None,
) -> AdaptResult:
    """Train a U-Net from scratch on the annotated slices of `train` (method "scratch")."""
    config = options.to_model_config()
    if options.patch_size % config.size_multiple:
        raise ValueError(f"patch_size must be a multiple of {config.size_multiple}, "
                         f"got {options.patch_size}")
    device = pick_device(str(device) if device is not None else None)
    seed_everything(options.seed)
    model = unet_from_config(config).to(device).train()
    sampler = SliceSampler(train, options.patch_size, options.batch_size, options.seed)
    optimizer = nesterov_sgd(list(model.parameters()), options.learning_rate)
    history = run_training(
        model, sampler, iterations=options.iterations, optimizers=[optimizer],
        schedulers=[step_decay(optimizer, options.iterations, SOURCE_DECAY_AT)],
        device=device, progress=progress, should_stop=should_stop,
    )
    return AdaptResult(model.eval(), config, history, None, None, "scratch")


def _export_recalibrated(
    model: SpotTUNet, volumes: Sequence[PreparedVolume], multiple: int, device: torch.device
) -> UNet:
    """Export a global-policy SpotTUNet, re-estimating the chosen trainable twins' BatchNorms.

    While training, each batch runs one sampled configuration, so a trainable twin's BatchNorm
    sees batch statistics of that configuration while its running averages mix all the sampled
    ones; the exported (argmax) configuration then meets statistics it was never trained with.
    Re-estimating them on the target images (no labels) for the chosen configuration removes that
    mismatch, as in BN recalibration for weight-sharing supernets. Frozen twins keep theirs.
    """
    plain = model.export()
    chosen = [name for name, use in zip(model.gate_names, model.global_decisions().tolist(),
                                        strict=True) if use]
    if chosen:
        reestimate_batchnorm(plain, volumes, multiple=multiple, device=device, units=chosen)
    return plain.eval()

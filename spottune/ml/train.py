"""Adapting a source U-Net to a target domain (SpotTUnet and baselines), and source training.

Schedules follow the paper: SGD Nesterov (momentum 0.9), the learning rate decayed x0.1 at 75% of
the fine-tuning iterations (80% for source training); the policy has its own SGD Nesterov, at 10x
the network's rate at the paper's budget (0.01 vs 1e-3; at short CPU budgets the ratio chosen on
validation data is 1), weight decay 1e-3, decayed at the same step as the network's (as in the
reference configs). Loss: mean BCE with logits (+ lambda * share of trainable-twin choices).
Without explicit learning rates both follow the iteration budget (default_learning_rate,
default_policy_learning_rate), so short CPU runs and long GPU runs both train.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from spottune.contract import METHODS, AdaptationOptions, PretrainingOptions
from spottune.ml.baselines import (
    finetuned_units,
    freeze_except,
    reestimate_batchnorm,
    train_mode_except,
)
from spottune.ml.config import GatingConfig, ModelConfig, source_model_config
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
from spottune.ml.policy import PolicyStart, agent_stride_for
from spottune.ml.preparation import PreparedVolume
from spottune.ml.readout import PolicyRecord, policy_record
from spottune.ml.sampling import SliceSampler
from spottune.ml.spottune import FrozenNorm, GateDraws, SpotTUNet

__all__ = [
    "METHODS", "AdaptOptions", "AdaptResult", "Cancelled", "PolicyRecord", "Progress",
    "SourceOptions", "adapt", "default_lambda", "paper_lambda", "policy_record", "train_source",
]

log = logging.getLogger(__name__)

FINETUNE_DECAY_AT = 0.75  # paper: x0.1 at epoch 45 of 60
SOURCE_DECAY_AT = 0.8  # paper: x0.1 at epoch 80 of 100

# Paper's tuned lambda by number of annotated target slices.
LAMBDA_BY_SLICES: dict[int, float] = {
    5: 0.010, 8: 0.007, 12: 0.012, 24: 0.005, 45: 0.005, 90: 0.007, 270: 0.005, 540: 0.005, 800: 0.0
}


# Learning rates by iteration budget, log-linear through two measured settings each, clamped to
# that range: the paper's GPU schedule (6000 iterations, network 1e-3, policy 1e-2) and the CPU
# schedule chosen on the benchmark's validation scans (200 iterations: network 0.05, which beat 60
# at 0.01 for every method there; policy 0.05, which beat 0.5 - the paper's 10x ratio - by 0.05
# sDice at 5 and 12 slices, with less saturated gates; bench/results/choices-cpu.md).
LR_ANCHORS = ((200, 0.05), (6000, 1e-3))
POLICY_LR_ANCHORS = ((200, 0.05), (6000, 1e-2))
SHORT_SCHEDULE_LAMBDA = 0.1
"""SpotTUnet's penalty on choosing trainable twins for schedules of up to 800 iterations, chosen
on the benchmark's validation scans at 400 iterations, 5 and 12 slices, both policies
(bench/results/choices-lambda-cpu.md), and confirmed at 800 (higher than the paper's value in 4
of 4 cells, +0.010 to +0.016; bench/results/choices-lambda-800-cpu.md): the paper's values
(0.010 / 0.012 there, tuned for its 6000-10000 GPU iterations) left the penalty too weak to
matter - 0 scored the same - while 0.1 raised validation sDice by +0.030 / +0.016 (instance)
and +0.024 / +0.011 (global) and made the instance policy fine-tune about a quarter of its
blocks, mostly the encoder's and bottleneck's residual blocks, instead of about half; 0.3 scored
lower than 0.1 in 3 of the 4 (see default_lambda)."""
LAMBDA_ANCHOR_ITERATIONS = (800, 6000)
FROZEN_NORM: FrozenNorm = "target"
"""How SpotTUnet's frozen twins normalise while adapting (see spottune.py): with batch statistics,
as the reference code did, so their running statistics follow the target domain. On the
validation scans it beat source statistics by +0.029 [-0.005, +0.073] / +0.028 [-0.004, +0.071]
sDice at 5 / 12 slices with the instance policy and +0.015 [-0.041, +0.056] / +0.048 [-0.001,
+0.117] with the global one (paired, bench/results/choices-cpu.md): higher at every budget, no
interval clear of 0. The cost: frozen twins must then see the whole batch, so the instance step
cannot skip their backward pass for slices that chose the other twin."""
GLOBAL_BN_REESTIMATE = False
"""Global policy: re-estimate the chosen units' BatchNorm statistics on the whole target images
after fine-tuning the exported configuration (see _export_finetuned). Off: on the validation scans
it cost 0.07-0.10 sDice at 5 and 12 slices (bench/results/choices-cpu.md)."""
GATE_DRAWS: GateDraws = "batch"
"""Global policy, while searching: one gate configuration per step (see spottune.py). One per slice
scored -0.007 [-0.022, +0.007] / -0.005 [-0.016, +0.004] sDice on the validation scans at 200 /
800 iterations (12 slices, paired; bench/results/replicates-global-slice-*.md), with replicate
agreement no higher, and the whole adaptation took 1.8-2.2x as long."""
POLICY_START: PolicyStart = "random"
"""Instance policy: how the agent's head starts (see policy.InstancePolicy). A neutral start
(p = 0.5 everywhere) changed nothing measurable at 200 iterations, 12 slices: validation sDice
-0.000 [-0.016, +0.014] paired, replicate agreement 0.05 vs 0.03, and the gates ended as decided
(mean |2p - 1| 0.90 vs 0.86; bench/results/replicates-neutral-200.md): the agent's policy
saturates in training whatever its start, so its initial lean is not why replicates disagree."""
GLOBAL_SEARCH_SHARE = 0.5
"""Global policy: share of the iterations spent searching the configuration; the rest fine-tunes the
exported plain U-Net (the chosen configuration) as a unit (see _export_finetuned). A quarter
instead of half scored -0.000 to -0.004 sDice on the validation scans at 800 iterations, every
budget (bench/results/choices-global-search-share-cpu.md), though its loss curve flattened."""


def _log_linear(anchors: tuple[tuple[int, float], tuple[int, float]], iterations: int) -> float:
    (n0, v0), (n1, v1) = anchors
    slope = math.log(v1 / v0) / math.log(n1 / n0)
    value = v0 * (max(iterations, 1) / n0) ** slope
    return float(min(max(v0, v1), max(min(v0, v1), value)))


def default_learning_rate(iterations: int) -> float:
    """The network learning rate for an adaptation of `iterations` batches (see LR_ANCHORS)."""
    return _log_linear(LR_ANCHORS, iterations)


def default_policy_learning_rate(iterations: int) -> float:
    """The policy learning rate for `iterations` batches (see POLICY_LR_ANCHORS)."""
    return _log_linear(POLICY_LR_ANCHORS, iterations)


def paper_lambda(n_slices: int) -> float:
    """The paper's lambda for the budget nearest to `n_slices` (nearest on a log scale, since the
    budgets are roughly geometric)."""
    if n_slices < 1:
        raise ValueError(f"n_slices must be positive, got {n_slices}")
    nearest = min(LAMBDA_BY_SLICES, key=lambda budget: abs(math.log(n_slices / budget)))
    return LAMBDA_BY_SLICES[nearest]


def default_lambda(n_slices: int, iterations: int) -> float:
    """SpotTUnet's lambda for `n_slices` annotated slices and an adaptation of `iterations`
    batches: SHORT_SCHEDULE_LAMBDA up to LAMBDA_ANCHOR_ITERATIONS[0], the paper's value
    (paper_lambda) from LAMBDA_ANCHOR_ITERATIONS[1], linear in log(iterations) between."""
    paper = paper_lambda(n_slices)
    short, long = LAMBDA_ANCHOR_ITERATIONS
    weight = min(1.0, max(0.0, math.log(long / max(iterations, 1)) / math.log(long / short)))
    return float(weight * SHORT_SCHEDULE_LAMBDA + (1 - weight) * paper)


# The options are the job contract's (spottune.contract); these names are kept for the callers
# written against them.
AdaptOptions = AdaptationOptions
SourceOptions = PretrainingOptions


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


def network_learning_rate(options: AdaptOptions) -> float:
    """The network's learning rate: the option, or the one for the iteration budget."""
    if options.learning_rate is not None:
        return options.learning_rate
    return default_learning_rate(options.iterations)


def policy_learning_rate(options: AdaptOptions) -> float:
    """The policy's learning rate: the option, or the budget's policy-to-network ratio (1 at 200
    iterations, the paper's 10 at 6000) times the network's rate."""
    if options.policy_learning_rate is not None:
        return options.policy_learning_rate
    ratio = (default_policy_learning_rate(options.iterations)
             / default_learning_rate(options.iterations))
    return ratio * network_learning_rate(options)


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
    frozen_norm: FrozenNorm = FROZEN_NORM,
    global_bn_reestimate: bool = GLOBAL_BN_REESTIMATE,
    gate_draws: GateDraws = GATE_DRAWS,
    policy_start: PolicyStart = POLICY_START,
    global_search_share: float = GLOBAL_SEARCH_SHARE,
) -> AdaptResult:
    """Adapt `base` (described by `config`, not modified) to the annotated slices of `train`.

    `unlabelled` target volumes are used only by AdaBN and the global policy's BatchNorm
    re-estimation (with the train volumes' slices). `frozen_norm`: SpotTUnet only, see spottune.py.
    `global_bn_reestimate`: global policy only, see _export_finetuned. `gate_draws`: global
    policy only, see spottune.py. `policy_start`: instance policy only, see policy.py.
    `global_search_share`: global policy only, the share of the iterations spent searching the
    configuration, in (0, 1]; the rest fine-tunes the exported configuration.
    Raises Cancelled if should_stop() returns True, ValueError for an unknown method or bad input.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(base, UNet) or config.gating is not None:
        raise ValueError("adapt() starts from a plain UNet and its config (gating None)")
    if not 0 < global_search_share <= 1:
        raise ValueError(f"global_search_share must be in (0, 1], got {global_search_share}")
    device = pick_device(str(device) if device is not None else None)
    seed_everything(options.seed)
    multiple = config.size_multiple

    if method == "spottune":
        return _adapt_spottune(base, config, train, options, unlabelled, progress, should_stop,
                               device, frozen_norm, global_bn_reestimate, gate_draws,
                               policy_start, global_search_share)

    model = copy.deepcopy(base).to(device)
    if options.adabn:
        reestimate_batchnorm(model, [*unlabelled, *train], multiple=multiple, device=device)
    history: list[dict[str, float]] = []
    if method != "none":
        sampler = SliceSampler(train, _patch_size(options.patch_size, train, multiple),
                               options.batch_size, options.seed)
        history = finetune_units(model, finetuned_units(model, method), sampler, options,
                                 options.iterations, device=device, progress=progress,
                                 should_stop=should_stop)
    model.requires_grad_(True).eval()
    plain_config = config.model_copy(update={"gating": None})
    return AdaptResult(model, plain_config, history, None, None, method)


def finetune_units(
    model: UNet,
    units: Sequence[str],
    sampler: SliceSampler,
    options: AdaptOptions,
    iterations: int,
    *,
    device: torch.device,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> list[dict[str, float]]:
    """Train only `units` of `model` (the others frozen, in eval mode) for `iterations` batches."""
    freeze_except(model, units)
    train_mode_except(model, [spec.name for spec in model.units if spec.name not in units])
    optimizer = nesterov_sgd([p for p in model.parameters() if p.requires_grad],
                             network_learning_rate(options))
    return run_training(
        model, sampler, iterations=iterations, optimizers=[optimizer],
        schedulers=[step_decay(optimizer, iterations, FINETUNE_DECAY_AT)],
        device=device, progress=progress, should_stop=should_stop,
    )


def train_gated(
    model: SpotTUNet,
    sampler: SliceSampler,
    options: AdaptOptions,
    iterations: int,
    lambda_reg: float,
    *,
    device: torch.device,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> list[dict[str, float]]:
    """Train a SpotTUNet's trainable twins and its policy together for `iterations` batches.

    Both optimisers decay x0.1 at the same step (FINETUNE_DECAY_AT), as in the reference configs.
    """
    model.train()
    optimizer = nesterov_sgd(list(model.trainable.parameters()), network_learning_rate(options))
    optimizers = [optimizer]
    policy_parameters = list(model.policy.parameters())
    if policy_parameters:  # a FixedPolicy has none
        optimizers.append(nesterov_sgd(policy_parameters, policy_learning_rate(options),
                                       options.policy_weight_decay))
    return run_training(
        model, sampler, iterations=iterations, optimizers=optimizers,
        schedulers=[step_decay(o, iterations, FINETUNE_DECAY_AT) for o in optimizers],
        device=device, lambda_reg=lambda_reg, progress=progress, should_stop=should_stop,
    )


def _phase(progress: ProgressCallback | None, done: int, total: int) -> ProgressCallback | None:
    """Progress of one phase of a longer run, reported as steps of the whole run."""
    if progress is None:
        return None

    def report(p: Progress) -> None:
        step = done + p.step
        per_step = (p.eta_seconds / max(1, p.total - p.step)) if p.eta_seconds else None
        eta = per_step * (total - step) if per_step is not None and p.step < p.total else None
        progress(Progress(step, total, p.loss, eta if step < total else 0.0))

    return report


def _adapt_spottune(
    base: UNet,
    config: ModelConfig,
    train: Sequence[PreparedVolume],
    options: AdaptOptions,
    unlabelled: Sequence[PreparedVolume],
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
    device: torch.device,
    frozen_norm: FrozenNorm,
    global_bn_reestimate: bool = GLOBAL_BN_REESTIMATE,
    gate_draws: GateDraws = GATE_DRAWS,
    policy_start: PolicyStart = POLICY_START,
    global_search_share: float = GLOBAL_SEARCH_SHARE,
) -> AdaptResult:
    multiple = config.size_multiple
    patch = _patch_size(options.patch_size, train, multiple)
    sampler = SliceSampler(train, patch, options.batch_size, options.seed)
    lambda_reg = (options.lambda_reg if options.lambda_reg is not None
                  else default_lambda(sampler.n_annotated_slices, options.iterations))
    if options.adabn:
        # Once, before the twins are made: both start from target-domain statistics. Frozen twins
        # on source statistics (frozen_norm "source") then keep them; twins in train mode (the
        # trainable ones, and the frozen ones with "target") overwrite them within ~50 steps, so
        # re-estimating those alone would be a no-op.
        base = copy.deepcopy(base).to(device)
        reestimate_batchnorm(base, [*unlabelled, *train], multiple=multiple, device=device)
    stride = agent_stride_for(patch) if options.policy == "instance" else None
    model = SpotTUNet(base, options.policy, options.temperature, agent_stride=stride,
                      frozen_norm=frozen_norm, gate_draws=gate_draws,
                      policy_start=policy_start).to(device)
    search = options.iterations
    if options.policy == "global":
        search = max(1, round(global_search_share * options.iterations))
    history = train_gated(model, sampler, options, search, lambda_reg, device=device,
                          progress=_phase(progress, 0, options.iterations),
                          should_stop=should_stop)
    model.eval()
    record = policy_record(model, train, "spottune", lambda_reg)
    log.info("spottune (%s): trainable twin chosen for %.0f%% of gate decisions",
             options.policy, 100 * sum(record.frequency) / len(record.frequency))
    if options.policy == "global":
        plain = config.model_copy(update={"gating": None})
        exported = _export_finetuned(model, sampler, options, options.iterations - search,
                                     [*unlabelled, *train], multiple, device,
                                     _phase(progress, search, options.iterations), should_stop,
                                     reestimate=global_bn_reestimate)
        history += [{**h, "step": h["step"] + search} for h in exported[1]]
        return AdaptResult(exported[0], plain, history, lambda_reg, record, "spottune")
    gated = config.model_copy(update={"gating": GatingConfig(
        policy="instance", temperature=options.temperature, agent_stride=stride)})
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
    config = source_model_config(options)
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


def _export_finetuned(
    model: SpotTUNet,
    sampler: SliceSampler,
    options: AdaptOptions,
    iterations: int,
    volumes: Sequence[PreparedVolume],
    multiple: int,
    device: torch.device,
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
    *,
    reestimate: bool = GLOBAL_BN_REESTIMATE,
) -> tuple[UNet, list[dict[str, float]]]:
    """Export a global-policy SpotTUNet and fine-tune the chosen configuration as a plain U-Net.

    While searching, each batch runs one sampled configuration, so the trainable twins were trained
    as members of random mixtures and their BatchNorm running averages mix all the sampled ones.
    The exported (argmax) configuration is therefore trained `iterations` more batches as a plain
    U-Net (chosen units trainable, the rest frozen); with momentum 0.1 that replaces the chosen
    units' running averages with the exported configuration's own, on annotated patches. With
    `reestimate` the chosen units' statistics are then re-estimated on whole target slices (no
    labels), as in BN recalibration for weight-sharing supernets; off by default, since whole
    slices (much background) are not the patches those units were fine-tuned on and it cost
    0.07-0.10 sDice on validation. Frozen units keep the source's statistics. Returns (model in
    eval mode, fine-tuning history).
    """
    plain = model.export()
    chosen = [name for name, use in zip(model.gate_names, model.global_decisions().tolist(),
                                        strict=True) if use]
    history: list[dict[str, float]] = []
    if chosen and iterations > 0:
        history = finetune_units(plain, chosen, sampler, options, iterations, device=device,
                                 progress=progress, should_stop=should_stop)
        plain.requires_grad_(True)
    if chosen and reestimate:
        reestimate_batchnorm(plain, volumes, multiple=multiple, device=device, units=chosen)
    return plain.eval(), history

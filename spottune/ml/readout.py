"""Policy readout: how often each gate of a SpotTUNet picks its trainable (fine-tuned) twin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spottune.contract import PolicyRecord, PolicyReport
from spottune.ml.inference import required_multiple
from spottune.ml.policy import sample_gates, trainable_probability
from spottune.ml.preparation import PreparedVolume
from spottune.ml.spottune import SpotTUNet

READOUT_BATCH = 32


def _as_slices(slices: Sequence[np.ndarray] | Sequence[PreparedVolume]) -> list[np.ndarray]:
    """Stacks [S, H, W]: a PreparedVolume's annotated slices (all if none is annotated); arrays as
    given ([H, W] or [S, H, W])."""
    stacks = []
    for item in slices:
        if isinstance(item, PreparedVolume):
            chosen = item.image[item.annotated] if item.annotated.any() else item.image
            stacks.append(np.asarray(chosen, dtype=np.float32))
        else:
            array = np.asarray(item, dtype=np.float32)
            stacks.append(array[None] if array.ndim == 2 else array)
    return [s for s in stacks if s.shape[0]]


@torch.inference_mode()
def policy_record(
    model: SpotTUNet,
    slices: Sequence[np.ndarray] | Sequence[PreparedVolume],
    method: str = "spottune",
    lambda_reg: float | None = None,
) -> PolicyRecord:
    """Per-gate fine-tune frequency and probability over `slices`, in eval mode (argmax)."""
    stacks = _as_slices(slices)
    if not stacks:
        raise ValueError("policy_record needs at least one slice")
    device = next(model.parameters()).device
    multiple = required_multiple(model)
    chosen = torch.zeros(model.n_gates, dtype=torch.float64)
    probability = torch.zeros(model.n_gates, dtype=torch.float64)
    count = 0
    was_training = model.training
    model.eval()
    try:
        for stack in stacks:
            for start in range(0, stack.shape[0], READOUT_BATCH):
                x = torch.from_numpy(np.ascontiguousarray(stack[start : start + READOUT_BATCH]))
                x = x[:, None].to(device)
                x = F.pad(x, (0, -x.shape[-1] % multiple, 0, -x.shape[-2] % multiple))
                logits = model.gate_logits(x).float().expand(x.shape[0], -1, -1)
                chosen += sample_gates(logits, model.temperature, False).sum(0).double().cpu()
                probability += trainable_probability(logits).sum(0).double().cpu()
                count += x.shape[0]
    finally:
        model.train(was_training)
    return PolicyRecord(
        gate_names=list(model.gate_names),
        gate_stages=list(model.gate_stages),
        frequency=(chosen / count).tolist(),
        probability=(probability / count).tolist(),
        policy=model.policy_kind,
        lambda_reg=lambda_reg,
        method=method,
    )


def stage_summary(record: PolicyRecord) -> list[dict[str, Any]]:
    """Per stage, in network order: mean fine-tune probability and frequency of its gates."""
    return [stage.model_dump() for stage in PolicyReport.from_record(record).stages]


def where_the_shift_lives(record: PolicyRecord) -> str:
    """One or two sentences naming the stages the policy fine-tuned, strongest first."""
    return PolicyReport.from_record(record).shift

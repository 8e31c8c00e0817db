"""SpotTUnet policies: who decides, per gate, between the frozen and the trainable twin.

A policy maps the input batch to logits [B', n_gates, 2] (index 0 = frozen twin, 1 = trainable
twin); B' is B for the per-slice agent and 1 for the global policy. `sample_gates` turns logits into
hard decisions: straight-through Gumbel-softmax while training, argmax (no noise) in eval mode.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spottune.contract import PolicyKind

FROZEN, TRAINABLE = 0, 1  # positions in the last axis of policy logits
PolicyStart = Literal["random", "neutral"]

AGENT_INPUT_SIZE = 32
"""The agent sees its input average-pooled so that a training patch becomes about 32x32 pixels (a
deviation from the paper's agent, which sees the full patch): the decision depends on global
contrast and which part of the head the slice shows, not on fine detail. At 64x64 the agent alone
cost ~9% of a 128x128 U-Net step on CPU; at 32x32 ~2.5%. The agent ends in a global average pool,
so it accepts any input size."""


def agent_stride_for(patch_size: int) -> int:
    """Pooling stride that brings a `patch_size` training patch to about AGENT_INPUT_SIZE pixels.

    The stride is fixed for the model's life (it is stored in its GatingConfig), so whole slices at
    inference are pooled by the same factor as training patches: the agent sees one scale.
    """
    return max(1, round(patch_size / AGENT_INPUT_SIZE))


class _AgentBlock(nn.Module):
    """Basic residual block, stride 2, channels doubled; parameter-free shortcut (avg-pool + zero
    channels) as in the SpotTune agent. [B, C, H, W] -> [B, 2C, H/2, W/2]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pad_channels = out_channels - in_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        # ceil_mode: the same output size as the stride-2 conv for odd inputs too
        shortcut = F.pad(F.avg_pool2d(x, 2, ceil_mode=True), (0, 0, 0, 0, 0, self.pad_channels))
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(shortcut + self.norm2(self.conv2(h)))


class InstancePolicy(nn.Module):
    """The paper's agent: a small ResNet deciding per slice.

    conv 3x3 C->32, three basic blocks 64/128/256 (stride 2), global average pool, linear to
    2 * n_gates. Inputs are first average-pooled by `stride` (see agent_stride_for); with
    stride None (models saved before the stride existed) any input larger than AGENT_INPUT_SIZE is
    pooled to AGENT_INPUT_SIZE, whatever its size. `start`: "random" initialises the head as
    any linear layer (the reference code's), so an untrained agent already leans, per gate, one
    way or the other (mean |2p - 1| about 0.2) and each seed leans differently; "neutral" starts
    it at zero, p = 0.5 for every gate and slice, so only training makes it lean.
    forward(x [B, C, H, W]) -> logits [B, n_gates, 2].
    """

    def __init__(self, n_gates: int, in_channels: int = 1, stride: int | None = None,
                 start: PolicyStart = "random") -> None:
        super().__init__()
        self.n_gates = n_gates
        self.stride = stride
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.blocks = nn.Sequential(
            _AgentBlock(32, 64), _AgentBlock(64, 128), _AgentBlock(128, 256)
        )
        self.head = nn.Linear(256, 2 * n_gates)
        if start == "neutral":  # every slice starts at p = 0.5 for every gate
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride is not None:
            if self.stride > 1:
                x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        elif max(x.shape[-2:]) > AGENT_INPUT_SIZE:
            x = F.adaptive_avg_pool2d(x, AGENT_INPUT_SIZE)
        h = self.blocks(self.stem(x))
        logits: Tensor = self.head(h.mean(dim=(-2, -1)))
        return logits.view(x.shape[0], self.n_gates, 2)


class GlobalPolicy(nn.Module):
    """One learnable decision per gate for all inputs. forward(x) -> logits [1, n_gates, 2]."""

    def __init__(self, n_gates: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_gates, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.unsqueeze(0)


class FixedPolicy(nn.Module):
    """Decisions given in advance, one per gate for all inputs (no parameters).

    decisions: bool [n_gates], True = trainable twin. forward(x) -> logits [1, n_gates, 2] with a
    margin so large that Gumbel noise at any sane temperature never flips a decision. Used to check
    that SpotTUNet with a fixed configuration trains exactly like the matching fixed method.
    """

    MARGIN = 1e4

    def __init__(self, decisions: Tensor) -> None:
        super().__init__()
        chosen = decisions.bool().float()
        self.register_buffer("fixed_logits", torch.stack([1 - chosen, chosen], -1) * self.MARGIN)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.get_buffer("fixed_logits")
        return logits.unsqueeze(0)


def make_policy(
    kind: PolicyKind, n_gates: int, in_channels: int = 1, agent_stride: int | None = None,
    start: PolicyStart = "random",
) -> nn.Module:
    """The policy of `kind`; `start`: the instance agent's initial head (the global policy always
    starts at p = 0.5)."""
    if kind == "instance":
        return InstancePolicy(n_gates, in_channels, agent_stride, start)
    if kind == "global":
        return GlobalPolicy(n_gates)
    raise ValueError(f"unknown policy {kind!r}; expected 'instance' or 'global'")


def sample_gates(logits: Tensor, temperature: float, training: bool) -> Tensor:
    """Hard gate decisions from logits [..., n_gates, 2] -> [..., n_gates], 1 = trainable twin.

    Training: straight-through hard Gumbel-softmax (forward is exactly 0/1, the gradient is that of
    the soft sample). Eval: argmax without noise; ties go to the frozen twin.
    """
    if training:
        return F.gumbel_softmax(logits.float(), tau=temperature, hard=True, dim=-1)[..., TRAINABLE]
    return (logits[..., TRAINABLE] > logits[..., FROZEN]).float()


def trainable_probability(logits: Tensor) -> Tensor:
    """Softmax probability of choosing the trainable twin: [..., n_gates, 2] -> [..., n_gates]."""
    return torch.softmax(logits.float(), dim=-1)[..., TRAINABLE]

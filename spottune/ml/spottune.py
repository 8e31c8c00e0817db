"""SpotTUNet: every unit of a source U-Net as a frozen and a trainable twin, chosen by a policy.

Output of gate i for sample b: g[b, i] * trainable_i(x) + (1 - g[b, i]) * frozen_i(x), with
g in {0, 1}. Nothing is recorded on the module during forward.

How frozen twins normalise (`frozen_norm`): "source" keeps them in eval mode at all times, so they
normalise with the source model's BatchNorm statistics and those never change; "target" lets them
follow the module's train/eval mode as the reference code did, so while training they normalise
with batch statistics (as the trainable twins do) and their running statistics drift to the target
domain (their weights stay frozen either way). With "source" every gate also chooses between two
normalisations, not only between two sets of weights.

How often a global policy samples its gates while training (`gate_draws`): "batch" draws one
configuration per step for the whole batch (the unchosen twins then run forward only, and no
twin back-propagates for nothing); "slice" draws one configuration per slice from the same
logits, as the instance policy does, so every step averages the policy's straight-through
gradient over as many configurations as slices (both twins then run on every slice). An
instance policy draws per slice either way.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from spottune.ml.network import PreActivation, ResBlock, UNet, check_input_size
from spottune.ml.policy import FixedPolicy, PolicyKind, PolicyStart, make_policy, sample_gates

FrozenNorm = Literal["source", "target"]
GateDraws = Literal["batch", "slice"]


class _GateMix(torch.autograd.Function):
    """out = g * trainable_out + (1 - g) * frozen_out for hard g in {0, 1}, straight-through.

    Gradients equal those of that expression (and of torch.lerp), but a twin no sample chose gets
    None instead of a zero tensor, so autograd skips its whole backward pass: with the global
    policy the unchosen twins cost a forward pass only.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        frozen_out: Tensor,
        trainable_out: Tensor,
        gate: Tensor,
        all_trainable: bool,
        all_frozen: bool,
    ) -> Tensor:
        ctx.save_for_backward(frozen_out, trainable_out, gate)
        ctx.all_trainable, ctx.all_frozen = all_trainable, all_frozen  # type: ignore[attr-defined]
        weight = gate.view(-1, 1, 1, 1).to(trainable_out.dtype)
        # lerp(f, t, w) is exactly f at w = 0 and exactly t at w = 1, in one kernel.
        return torch.lerp(frozen_out, trainable_out, weight)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        frozen_out, trainable_out, gate = ctx.saved_tensors  # type: ignore[attr-defined]
        all_trainable: bool = ctx.all_trainable  # type: ignore[attr-defined]
        all_frozen: bool = ctx.all_frozen  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        weight = gate.view(-1, 1, 1, 1).to(grad.dtype)
        grad_gate = None
        if needs[2]:
            per_sample = (grad * (trainable_out - frozen_out)).sum(dim=(1, 2, 3))
            grad_gate = per_sample.sum().view(1) if gate.numel() == 1 else per_sample
            grad_gate = grad_gate.to(gate.dtype)
        grad_frozen = grad_trainable = None
        if needs[0] and not all_trainable:
            grad_frozen = grad if all_frozen else grad * (1 - weight)
        if needs[1] and not all_frozen:
            grad_trainable = grad if all_trainable else grad * weight
        return grad_frozen, grad_trainable, grad_gate, None, None


_ROUTED_ROWS: ContextVar[Tensor | None] = ContextVar("spottune_routed_rows", default=None)
"""Rows of the batch whose gate chose the twin running now (set by SpotTUNet._gated)."""


@contextmanager
def _routed(rows: Tensor | None) -> Iterator[None]:
    token = _ROUTED_ROWS.set(rows)
    try:
        yield
    finally:
        _ROUTED_ROWS.reset(token)


class _RoutedConvolution(torch.autograd.Function):
    """A convolution whose backward runs on `rows` of the batch only.

    Exact where the gradient of every other row of the output is zero: a twin's last convolution
    inside a gated unit, whose output reaches the loss only through the gate's mix (_GateMix
    multiplies its gradient by exactly 0 on the rows that chose the other twin). The other rows'
    input gradients are then exactly 0, and their weight-gradient terms are exact zeros too.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, weight: Tensor,
        bias: Tensor | None, rows: Tensor, conv: tuple[Any, ...],
    ) -> Tensor:
        dtypes = x.dtype, weight.dtype
        device = x.device.type
        if torch.is_autocast_enabled(device):  # cast as autocast would, and keep the casts
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device, enabled=False):
            out = torch.ops.aten.convolution(x, weight, bias, *conv)
        ctx.save_for_backward(x, weight, rows)
        ctx.conv, ctx.dtypes = conv, dtypes  # type: ignore[attr-defined]
        ctx.bias_sizes = None if bias is None else list(bias.shape)  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, weight, rows = ctx.saved_tensors  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        bias_sizes = ctx.bias_sizes  # type: ignore[attr-defined]
        mask = [needs[0], needs[1], needs[2] and bias_sizes is not None]
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad.index_select(0, rows).to(x.dtype), x.index_select(0, rows), weight, bias_sizes,
            *ctx.conv, mask)  # type: ignore[attr-defined]
        x_dtype, w_dtype = ctx.dtypes  # type: ignore[attr-defined]
        if grad_x is not None:
            full = x.new_zeros(x.shape, dtype=x_dtype)
            grad_x = full.index_copy_(0, rows, grad_x.to(x_dtype))
        if grad_w is not None:
            grad_w = grad_w.to(w_dtype)
        if grad_b is not None:
            grad_b = grad_b.to(w_dtype)
        return grad_x, grad_w, grad_b, None, None


class _Routed:
    """Mixin of the routed convolutions: with rows set (_routed) and autograd on, the backward
    runs on those rows only (_RoutedConvolution); otherwise the plain convolution."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:  # noqa: A002
        rows = _ROUTED_ROWS.get()
        if output_size is not None:  # a transposed convolution asked for another output size
            return super().forward(input, output_size)  # type: ignore[misc]
        if rows is None or not torch.is_grad_enabled():
            return super().forward(input)  # type: ignore[misc]
        conv = cast(nn.Conv2d | nn.ConvTranspose2d, self)
        transposed = isinstance(conv, nn.ConvTranspose2d)
        args = (conv.stride, conv.padding, conv.dilation, transposed,
                conv.output_padding if transposed else (0, 0), conv.groups)
        out: Tensor = _RoutedConvolution.apply(input, conv.weight, conv.bias, rows, args)
        return out


class RoutedConv2d(_Routed, nn.Conv2d):
    """nn.Conv2d whose backward can run on the rows routed to it (same parameters, same state)."""


class RoutedConvTranspose2d(_Routed, nn.ConvTranspose2d):
    """nn.ConvTranspose2d whose backward can run on the rows routed to it."""


def _route_backward(twin: UNet, every_conv: bool) -> None:
    """Make the convolutions of `twin`'s units whose output gradient is zero on the rows that
    chose the other twin routed: each unit's last convolution, or with `every_conv` (a twin in
    eval mode, a per-row function, so zero rows stay zero through it) every convolution."""
    for spec in twin.units:
        unit = twin.get_submodule(spec.name)
        convs = [m for m in unit.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        last: list[nn.Conv2d | nn.ConvTranspose2d]
        if isinstance(unit, ResBlock):
            last = [unit.unit2.conv]
        elif isinstance(unit, PreActivation):
            last = [unit.conv]
        elif isinstance(unit, nn.Conv2d | nn.ConvTranspose2d):
            last = [unit]
        else:
            last = []
        for conv in convs if every_conv else last:
            if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                continue
            conv.__class__ = (RoutedConvTranspose2d if isinstance(conv, nn.ConvTranspose2d)
                              else RoutedConv2d)


def _rows(mask: Tensor, device: torch.device) -> Tensor:
    """Indices of the True entries of a bool [B] (on the CPU), on `device`."""
    return mask.nonzero().flatten().to(device, non_blocking=True)


def _route(h: Tensor, chosen: Tensor, trainable: nn.Module, frozen: nn.Module) -> Tensor:
    """Each slice through the twin it chose only; both twins per-slice functions (eval mode).
    Channels-last feature maps (the fused inference copies') stay channels-last."""
    rows_t, rows_f = _rows(chosen, h.device), _rows(~chosen, h.device)
    layout = (torch.channels_last if h.ndim == 4 and not h.is_contiguous()
              and h.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)

    def part(twin: nn.Module, rows: Tensor) -> Tensor:
        out: Tensor = twin(h.index_select(0, rows).contiguous(memory_format=layout))
        return out

    out_t = part(trainable, rows_t)
    out_f = part(frozen, rows_f).to(out_t.dtype)
    out = torch.empty((h.shape[0], *out_t.shape[1:]), dtype=out_t.dtype, device=out_t.device,
                      memory_format=layout)
    out.index_copy_(0, rows_t, out_t)
    out.index_copy_(0, rows_f, out_f)
    return out


class SpotTUNet(nn.Module):
    """Gated U-Net. forward(x [B, C, H, W]) -> logits [B, 1, H, W], like UNet.

    Args:
        base: the source U-Net; both twins start as deep copies of it (it is not modified).
        policy: "instance" (an agent decides per slice) or "global" (one decision per gate); or
            bool [n_gates] decisions fixed in advance (True = trainable twin; a FixedPolicy).
        temperature: Gumbel-softmax temperature used while training.
        agent_stride: instance policy: pooling stride of the agent's input (see policy.py).
        frozen_norm: how frozen twins normalise, "source" or "target" (see the module docstring).
        gate_draws: global policy, training: one gate configuration per "batch" or per "slice"
            (see the module docstring).
        policy_start: instance policy: the agent's initial head, "random" or "neutral"
            (see policy.InstancePolicy).

    State-dict layout: `frozen.<gate>.*`, `trainable.<gate>.*`, `policy.*`.
    """

    def __init__(
        self,
        base: UNet,
        policy: PolicyKind | Tensor = "instance",
        temperature: float = 0.1,
        *,
        agent_stride: int | None = None,
        frozen_norm: FrozenNorm = "source",
        gate_draws: GateDraws = "batch",
        policy_start: PolicyStart = "random",
        route_backward: bool = True,
    ):
        super().__init__()
        self.policy_kind: PolicyKind = "global" if isinstance(policy, Tensor) else policy
        self.temperature = temperature
        self.frozen_norm: FrozenNorm = frozen_norm
        self.gate_draws: GateDraws = gate_draws
        self.frozen = copy.deepcopy(base).requires_grad_(False).eval()
        self.trainable = copy.deepcopy(base).requires_grad_(True)
        if route_backward:  # False: every slice back-propagates through both twins (bench)
            _route_backward(self.trainable, every_conv=False)
            _route_backward(self.frozen, every_conv=frozen_norm == "source")
        self.gate_names: list[str] = [spec.name for spec in base.units]
        self.gate_stages: list[str] = [spec.stage for spec in base.units]
        self._gate_index = {name: i for i, name in enumerate(self.gate_names)}
        self.policy: nn.Module = (
            FixedPolicy(policy) if isinstance(policy, Tensor)
            else make_policy(policy, len(self.gate_names), base.in_channels, agent_stride,
                             policy_start)
        )
        self.train(base.training)

    @property
    def depth(self) -> int:
        """Downsamplings of the wrapped U-Net (inputs must be multiples of 2**depth)."""
        return self.trainable.depth

    @property
    def n_gates(self) -> int:
        return len(self.gate_names)

    def train(self, mode: bool = True) -> SpotTUNet:
        """Set train/eval mode; with frozen_norm "source" the frozen twins stay in eval mode."""
        super().train(mode)
        if self.frozen_norm == "source":
            self.frozen.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_gates(x)[0]

    def gate_logits(self, x: Tensor) -> Tensor:
        """Policy logits [B', n_gates, 2]; B' = B (instance) or 1 (global)."""
        logits: Tensor = self.policy(x)
        return logits

    def forward_with_gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, H, W] -> (logits [B, 1, H, W], gates [B, n_gates] with 1 = trainable twin).

        Gates are sampled (straight-through Gumbel) in train mode and argmax in eval mode; the
        gates carry gradient to the policy in train mode.
        """
        check_input_size(x, self.trainable.depth)
        logits = self.gate_logits(x)
        if self.training and self.gate_draws == "slice":
            logits = logits.expand(x.shape[0], -1, -1)  # one draw per slice, shared logits
        gates = sample_gates(logits, self.temperature, self.training)
        hard = gates.detach().to("cpu", torch.bool)  # one device sync per forward, not per gate
        all_trainable, all_frozen = hard.all(0).tolist(), (~hard).all(0).tolist()

        def run(name: str, h: Tensor) -> Tensor:
            i = self._gate_index[name]
            return self._gated(name, gates[:, i], h, hard[:, i], all_trainable[i], all_frozen[i])

        out = self.trainable.forward_units(x, run)
        return out, gates.expand(x.shape[0], -1)

    def _gated(
        self, name: str, g: Tensor, h: Tensor, chosen: Tensor, all_trainable: bool,
        all_frozen: bool,
    ) -> Tensor:
        """g [B] or [1] in {0, 1}; h [B, C, H, W]; chosen: g as bool on the CPU; the flags: every
        sample chose that twin.

        Each slice computes only what its gradient needs. A twin in eval mode is a per-slice
        function, so slices can be split between twins without changing any result; a twin in
        train mode normalises with statistics of the whole batch and must see every slice.
        """
        trainable = self.trainable.get_submodule(name)
        frozen = self.frozen.get_submodule(name)
        if not (torch.is_grad_enabled() and g.requires_grad):
            # No gradient to the policy: the twin a slice did not choose need not run for it.
            if all_trainable:
                return trainable(h)
            if all_frozen:
                return frozen(h)
            if not (trainable.training or frozen.training):
                return _route(h, chosen, trainable, frozen)
        # The policy's gradient needs both twins' outputs for every slice. A twin no slice chose
        # gets no gradient: its output feeds the policy's alone, so it runs without autograd.
        # Where the batch is split, each twin's routed convolutions back-propagate only the
        # slices that chose it (_RoutedConvolution).
        rows_t = rows_f = None
        if not (all_trainable or all_frozen):
            rows_t, rows_f = _rows(chosen, h.device), _rows(~chosen, h.device)
        with torch.set_grad_enabled(not all_frozen), _routed(rows_t):
            t_out = trainable(h)
        with torch.set_grad_enabled(not all_trainable), _routed(rows_f):
            f_out = frozen(h)
        out: Tensor = _GateMix.apply(f_out.to(t_out.dtype), t_out, g, all_trainable, all_frozen)
        return out

    @torch.no_grad()
    def global_decisions(self) -> Tensor:
        """Global policy only: bool [n_gates], True where the trainable twin is chosen (argmax)."""
        if self.policy_kind != "global":
            raise ValueError("global_decisions() needs the global policy; this one is per slice")
        return sample_gates(self.gate_logits(torch.empty(0)), self.temperature, False)[0].bool()

    @torch.no_grad()
    def export(self) -> UNet:
        """Global policy only: a plain UNet whose every unit is the twin the policy chose.

        In eval mode the exported net computes the same function as this gated one.
        """
        chosen = self.global_decisions().tolist()
        base = self.trainable
        plain = UNet(base.in_channels, base.width, base.depth, base.blocks_per_stage)
        state = {}
        for name, use_trainable in zip(self.gate_names, chosen, strict=True):
            source = (self.trainable if use_trainable else self.frozen).get_submodule(name)
            state.update({f"{name}.{key}": value for key, value in source.state_dict().items()})
        plain.load_state_dict(state, strict=True)
        return plain.to(next(base.parameters()).device).eval()

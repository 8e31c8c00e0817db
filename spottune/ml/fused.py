"""An inference-only copy of a plain U-Net with its residual blocks fused.

A ResBlock computes x + conv2(relu(bn2(conv1(relu(bn1(x)))))). In eval mode bn2 is a per-channel
affine map applied right after conv1, so it folds into conv1's weights and bias; the ReLU after it
and the residual sum after conv2 then run inside the convolutions (oneDNN post-ops on CPU, the same
fused kernels torch.compile emits), so a block makes two passes over memory besides its two
convolutions instead of five. On 2 CPU cores most of this network's time is such passes: its
feature maps have 16-128 channels, so the convolutions themselves are cheap.

The copy computes the same function as the original in eval mode, up to float rounding
(bench/speed.py measures mask agreement). It shares no tensors with the original and cannot be
trained.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spottune.ml.network import PreActivation, ResBlock, UNet
from spottune.ml.spottune import SpotTUNet


def _mkldnn_fusion(device: torch.device) -> bool:
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


class FusedResBlock(nn.Module):
    """Eval-mode ResBlock: relu(bn1(x)) -> conv1 with bn2 folded in, ReLU fused -> conv2 + x."""

    def __init__(self, block: ResBlock) -> None:
        super().__init__()
        self.norm = copy.deepcopy(block.unit1.norm).eval()
        conv1, conv2, norm2 = block.unit1.conv, block.unit2.conv, block.unit2.norm
        assert norm2.running_var is not None and norm2.running_mean is not None
        scale = norm2.weight / torch.sqrt(norm2.running_var + norm2.eps)
        shift = norm2.bias - norm2.running_mean * scale
        weight1 = conv1.weight * scale.view(-1, 1, 1, 1)
        bias1 = shift if conv1.bias is None else conv1.bias * scale + shift
        self.weight1 = nn.Parameter(weight1.detach().clone(), requires_grad=False)
        self.bias1 = nn.Parameter(bias1.detach().clone(), requires_grad=False)
        self.weight2 = nn.Parameter(conv2.weight.detach().clone(), requires_grad=False)
        self.bias2 = (None if conv2.bias is None
                      else nn.Parameter(conv2.bias.detach().clone(), requires_grad=False))
        self.padding1 = [int(p) for p in conv1.padding]
        self.padding2 = [int(p) for p in conv2.padding]

    def forward(self, x: Tensor) -> Tensor:
        a = torch.relu_(self.norm(x))
        if _mkldnn_fusion(x.device):
            ones = [1, 1]
            h: Tensor = torch.ops.mkldnn._convolution_pointwise(
                a, self.weight1, self.bias1, self.padding1, ones, ones, 1, "relu", [], "")
            out: Tensor = torch.ops.mkldnn._convolution_pointwise.binary(
                h, x, self.weight2, self.bias2, self.padding2, ones, ones, 1, "add",
                None, None, [], None)
            return out
        h = torch.relu_(F.conv2d(a, self.weight1, self.bias1, padding=self.padding1))
        return F.conv2d(h, self.weight2, self.bias2, padding=self.padding2).add_(x)


def fused_copy(
    model: UNet, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> UNet:
    """An eval-mode copy of `model` with every ResBlock fused, in `dtype`, channels-last.

    Feed it channels-last inputs of `dtype`. Only for inference: its blocks have no gradients.
    """
    fused = copy.deepcopy(model).eval()
    if device is not None:
        fused = fused.to(device)
    for module in list(fused.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ResBlock):
                setattr(module, name, FusedResBlock(child))
    for module in fused.modules():
        if isinstance(module, PreActivation):
            module.act.inplace = True
    fused.requires_grad_(False)
    return fused.to(dtype).to(memory_format=torch.channels_last)  # type: ignore[call-overload]


class _Float32Agent(nn.Module):
    """The policy of a gated copy, kept in FP32 on an FP32 view of its input: a slice's choice of
    twin must not flip with the precision the twins run in."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.policy(x.float())
        return out


def fused_spottune_copy(
    model: SpotTUNet, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> SpotTUNet:
    """An eval-mode copy of a SpotTUNet whose twins are fused copies (fused_copy) in `dtype`.

    In eval mode every slice runs only the twin its policy chose (SpotTUNet._gated), so with an
    instance policy a gated net costs about one fused U-Net plus its agent. The policy stays FP32.
    Feed it channels-last inputs of `dtype`.
    """
    # deepcopy's memo: the twins are copied as their fused copies, not copied and then replaced
    fused = {id(twin): fused_copy(twin, dtype=dtype, device=device)
             for twin in (model.trainable, model.frozen)}
    gated = copy.deepcopy(model, fused).eval().requires_grad_(False)
    policy = gated.policy.float()
    gated.policy = _Float32Agent(policy.to(device) if device is not None else policy)
    return gated

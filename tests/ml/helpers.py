"""Models the inference and engine tests share."""

from __future__ import annotations

import torch
from torch import nn

from spottune.ml.config import ModelConfig
from spottune.ml.factory import build_model
from spottune.ml.network import UNet


def unet_with_statistics(seed: int, *, conv_bias: bool = False, width: int = 4, depth: int = 2,
                         blocks_per_stage: int = 2) -> UNet:
    """A small U-Net (in train mode, as built) with non-trivial BatchNorm statistics and affine
    parameters, and with `conv_bias` random convolution biases too."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=width, depth=depth, blocks_per_stage=blocks_per_stage))
    assert isinstance(model, UNet)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                nn.init.uniform_(module.weight, 0.5, 1.5)
                nn.init.uniform_(module.bias, -0.2, 0.2)
            elif conv_bias and isinstance(module, nn.Conv2d) and module.bias is not None:
                nn.init.uniform_(module.bias, -0.2, 0.2)
    return model

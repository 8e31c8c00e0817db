"""The single factory: a network from its config (the config travels with the weights).

Kept apart from ``network`` and ``spottune`` so that the plain U-Net knows nothing of the gated
model built around it: ``spottune`` imports ``network``, this module imports both.
"""

from __future__ import annotations

from torch import nn

from spottune.ml.config import ModelConfig
from spottune.ml.network import unet_from_config
from spottune.ml.spottune import SpotTUNet


def build_model(config: ModelConfig) -> nn.Module:
    """A UNet, or a SpotTUNet around one when `config.gating` is set.

    Weights are freshly initialised; load a checkpoint's state dict into the result.
    """
    base = unet_from_config(config)
    if config.gating is None:
        return base
    gating = config.gating
    return SpotTUNet(base, gating.policy, gating.temperature, agent_stride=gating.agent_stride)

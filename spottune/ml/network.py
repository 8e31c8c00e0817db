"""The 2D residual U-Net of Zakazov et al. (MICCAI 2021), built from small named units.

Every unit a SpotTUnet may gate is its own named submodule, so gate names say where they are
(`down1.block0`, `skip.top`) and a state-dict key is `<gate name>.<parameter>`.

Layout for depth 3 (width w, channels w-2w-4w-8w)::

    init        3x3 conv C->w, blocks                 -> skip.top (1x1 conv) ----------------+
    down1       2x2 stride-2 pre-act conv w->2w, blocks  -> skip.down1 ----------------+      |
    down2       2x2 stride-2 pre-act conv, blocks        -> skip.down2 ---------+      |      |
    bottleneck  2x2 stride-2 pre-act conv, blocks, 2x2 transposed conv up   (+)<-+      |      |
    up2         blocks, transposed conv up                                        (+)<-+      |
    up1         blocks, transposed conv up                                               (+)<-+
    out         blocks, 1x1 pre-act conv w->1, BatchNorm(1)

Skips are additive (not concatenation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from spottune.ml.config import ModelConfig

UnitRunner = Callable[[str, Tensor], Tensor]
"""Applies the unit named by its gate name to a feature map: (name, x) -> y."""


class PreActivation(nn.Sequential):
    """BatchNorm -> ReLU -> conv. [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
            bias=bias,
        )


class ResBlock(nn.Module):
    """Two 3x3 pre-activation units plus identity. [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.unit1 = PreActivation(channels, channels, 3, bias=False)
        self.unit2 = PreActivation(channels, channels, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.unit2(self.unit1(x))


def _up(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """2x2 stride-2 transposed conv: [B, C_in, H, W] -> [B, C_out, 2H, 2W]."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)


@dataclass(frozen=True)
class UnitSpec:
    """One gateable unit: its gate name (also its module path) and the stage it belongs to."""

    name: str
    stage: str


class UNet(nn.Module):
    """2D residual U-Net: x [B, C, H, W] -> logits [B, 1, H, W], H and W multiples of 2**depth.

    Args:
        in_channels: input channels C.
        width: channels at the top level, doubled at each downsampling.
        depth: number of stride-2 downsamplings (the bottleneck's included).
        blocks_per_stage: ResBlocks in every stage.
    """

    def __init__(
        self, in_channels: int = 1, width: int = 16, depth: int = 3, blocks_per_stage: int = 3
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.width = width
        self.depth = depth
        self.blocks_per_stage = blocks_per_stage
        blocks = self._block_names = [f"block{b}" for b in range(blocks_per_stage)]

        def stage(modules: dict[str, nn.Module]) -> nn.ModuleDict:
            return nn.ModuleDict(modules)

        def res(channels: int) -> dict[str, nn.Module]:
            return {name: ResBlock(channels) for name in blocks}

        self.init = stage({"conv": nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                           **res(width)})
        for k in range(1, depth):
            channels = width * 2**k
            self.add_module(
                f"down{k}", stage({"down": PreActivation(channels // 2, channels, 2, 2, bias=False),
                                   **res(channels)}),
            )
        deepest = width * 2**depth
        self.bottleneck = stage({
            "down": PreActivation(deepest // 2, deepest, 2, 2, bias=False),
            **res(deepest),
            "up": _up(deepest, deepest // 2),
        })
        for k in reversed(range(1, depth)):
            channels = width * 2**k
            self.add_module(f"up{k}", stage({**res(channels), "up": _up(channels, channels // 2)}))
        self.out = stage(
            {**res(width), "conv": PreActivation(width, 1, 1), "norm": nn.BatchNorm2d(1)}
        )
        skip_names = ["top", *(f"down{k}" for k in range(1, depth))]
        self.skip = stage({
            name: nn.Conv2d(width * 2**k, width * 2**k, 1) for k, name in enumerate(skip_names)
        })
        self.units: list[UnitSpec] = self._unit_specs()

    def _unit_specs(self) -> list[UnitSpec]:
        """Gateable units in forward order of the main path, then the skips top to bottom."""
        specs = []
        for stage_name in self.stage_names:
            stage = self.get_submodule(stage_name)
            assert isinstance(stage, nn.ModuleDict)
            specs += [UnitSpec(f"{stage_name}.{unit}", stage_name) for unit in stage]
        specs += [UnitSpec(f"skip.{unit}", "skip") for unit in self.skip]
        return specs

    @property
    def stage_names(self) -> list[str]:
        """Main-path stages top to bottom and back: init, down1.., bottleneck, ..up1, out."""
        downs = [f"down{k}" for k in range(1, self.depth)]
        ups = [f"up{k}" for k in reversed(range(1, self.depth))]
        return ["init", *downs, "bottleneck", *ups, "out"]

    @property
    def gates(self) -> list[tuple[str, str, str]]:
        """(gate name, stage, module path) of every gateable unit; name and path coincide."""
        return [(spec.name, spec.stage, spec.name) for spec in self.units]

    def forward(self, x: Tensor) -> Tensor:
        check_input_size(x, self.depth)
        return self.forward_units(x, self._apply_unit)

    def _apply_unit(self, name: str, x: Tensor) -> Tensor:
        out: Tensor = self.get_submodule(name)(x)
        return out

    def forward_units(self, x: Tensor, run: UnitRunner) -> Tensor:
        """The U-Net's wiring with each unit applied by `run(name, x)`.

        SpotTUNet reuses this wiring with its gated twins, and the OpenVINO engine with graph
        nodes (openvino_engine.py), so the topology is written once. x: [B, C, H, W] -> logits
        [B, 1, H, W]; callers check the size (check_input_size).
        """
        blocks = self._block_names

        def through(stage_name: str, h: Tensor, units: list[str]) -> Tensor:
            for unit in units:
                h = run(f"{stage_name}.{unit}", h)
            return h

        h = through("init", x, ["conv", *blocks])
        skips = [run("skip.top", h)]
        for k in range(1, self.depth):
            h = through(f"down{k}", h, ["down", *blocks])
            skips.append(run(f"skip.down{k}", h))
        h = through("bottleneck", h, ["down", *blocks, "up"])
        for k in reversed(range(1, self.depth)):
            h = through(f"up{k}", h + skips[k], [*blocks, "up"])
        return through("out", h + skips[0], [*blocks, "conv", "norm"])


def unet_from_config(config: ModelConfig) -> UNet:
    """The plain U-Net of `config`, ignoring its gating."""
    return UNet(config.in_channels, config.width, config.depth, config.blocks_per_stage)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter scalars (only those with requires_grad if `trainable_only`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_input_size(x: torch.Tensor, depth: int) -> None:
    """Raise ValueError unless x [B, C, H, W] has H and W divisible by 2**depth."""
    multiple = 2**depth
    if x.ndim != 4 or x.shape[-1] % multiple or x.shape[-2] % multiple:
        raise ValueError(
            f"expected input [B, C, H, W] with H, W multiples of {multiple}, got {tuple(x.shape)}"
        )

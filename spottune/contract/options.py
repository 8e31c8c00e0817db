"""Options of each job kind: names, defaults, bounds and what they mean.

The API validates request bodies with these models (so /openapi.json lists every option), the
worker re-reads stored params with them, and the command line derives its flags from them.
Unknown keys are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from spottune.contract.kinds import PolicyKind

SpacingMm = Annotated[float, Field(ge=0.1, le=10.0)]
"""A voxel side in millimetres."""


def _isotropic(value: Any) -> Any:
    """A single number means the same spacing along rows and columns (2.0 -> (2.0, 2.0))."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (value, value)
    return value


InPlaneSpacing = Annotated[
    tuple[SpacingMm, SpacingMm],
    BeforeValidator(_isotropic, json_schema_input_type=tuple[SpacingMm, SpacingMm] | SpacingMm),
]
"""In-plane spacing of 2D slices (rows, cols), mm; one number for both."""

Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="Random seed (sampling, init).")]


class StrictModel(BaseModel):
    """Refuses unknown keys: a misspelt option is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class AdaptationOptions(StrictModel):
    """How to adapt a model. Defaults are the paper's (60 epochs x 100 batches of 16)."""

    iterations: int = Field(default=6000, ge=1, le=1_000_000,
                            description="Training steps (batches).")
    batch_size: int = Field(default=16, ge=1, le=512, description="Patches per step.")
    learning_rate: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="Network learning rate (SGD Nesterov); unset: derived from the iteration "
                    "budget by the training code.")
    policy_learning_rate: float | None = Field(
        default=None, gt=0.0, le=10.0,
        description="SpotTUnet policy learning rate; unset: the network's learning rate times "
                    "a ratio derived from the iteration budget (the paper's 10 at 6000 "
                    "iterations, 1 at 200, chosen on validation data).")
    policy_weight_decay: float = Field(default=1e-3, ge=0.0, le=1.0,
                                       description="Weight decay of the policy's optimiser.")
    lambda_reg: float | None = Field(
        default=None, ge=0.0, le=100.0,
        description="Weight of the penalty on choosing trainable blocks; unset: derived from "
                    "the iteration budget by the training code (0.1 up to 800 iterations, chosen "
                    "on validation data; the paper's value for the number of annotated slices "
                    "from 6000).")
    policy: PolicyKind = Field(
        default="instance",
        description="SpotTUnet policy: 'instance' chooses per slice, 'global' once per block "
                    "(exported as a plain U-Net).")
    temperature: float = Field(default=0.1, gt=0.0, le=10.0,
                               description="Gumbel-softmax temperature of the policy.")
    adabn: bool = Field(default=False, description="Re-estimate BatchNorm statistics on the "
                                                   "target images before training.")
    seed: Seed = 0
    patch_size: int | None = Field(
        default=None, ge=8, le=2048,
        description="Side of training patches, pixels (a multiple of 2**depth); unset: whole "
                    "slices.")
    replicates: int = Field(default=1, ge=1, le=8,
                            description="Train this many seeds and deliver one.")


class PretrainingOptions(StrictModel):
    """Training a source U-Net from scratch. Defaults are the paper's."""

    width: int = Field(default=16, ge=1, le=128,
                       description="Channels at the top of the U-Net; doubled per level.")
    depth: int = Field(default=3, ge=1, le=6, description="Number of downsamplings.")
    blocks_per_stage: int = Field(default=3, ge=1, le=8, description="Residual blocks per stage.")
    spacing_mm: InPlaneSpacing = Field(
        default=(0.95, 0.95),
        description="In-plane spacing the slices are resampled to (rows, cols), mm; one "
                    "number for both.")
    slice_axis: Literal[0, 1, 2] = Field(
        default=2, description="RAS axis the 2D slices are taken along (2 = axial).")
    patch_size: int = Field(default=256, ge=8, le=2048,
                            description="Side of training patches, pixels (a multiple of "
                                        "2**depth).")
    iterations: int = Field(default=10_000, ge=1, le=1_000_000,
                            description="Training steps (batches).")
    batch_size: int = Field(default=16, ge=1, le=512, description="Patches per step.")
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0,
                                 description="Learning rate (SGD Nesterov).")
    seed: Seed = 0


class SegmentationOptions(StrictModel):
    """How to segment scans with a stored model."""

    batch_size: int = Field(default=8, ge=1, le=512, description="Slices per forward pass.")
    largest_component: bool = Field(
        default=True, description="Keep only the largest connected 3D component of the mask.")

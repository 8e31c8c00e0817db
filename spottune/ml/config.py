"""Model configuration: the one description from which every network is built.

The config travels with the weights (safetensors metadata and a JSON file beside them), so a
checkpoint can always be rebuilt exactly. Bounds are checked here so that a hostile or mistaken
config is refused before any tensor is allocated.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from spottune.contract import InPlaneSpacing, PolicyKind, PretrainingOptions

# The deepest stage has width * 2**depth channels; beyond this a single 3x3 conv holds ~10M
# parameters and the model no longer fits the service's memory budget.
MAX_DEEPEST_CHANNELS = 1024

Percentile = Annotated[float, Field(ge=0.0, le=100.0)]


class ConfigError(ValueError):
    """A configuration was refused; the message names the field and what to fix."""


def bounds_of(model: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The allowed range of the field at `loc` (e.g. "1..128"), if it has numeric bounds."""
    metadata: Any = ()
    current: Any = model
    for part in loc:
        if isinstance(part, str):
            owner = _model_in(current)
            field = owner.model_fields.get(part) if owner is not None else None
            if field is None:
                return None
            current, metadata = field.annotation, field.metadata
        else:  # an element of a tuple: its bounds sit in Annotated[..., Field(...)]
            args = getattr(current, "__args__", ())
            if part >= len(args):
                return None
            current = args[part]
            metadata = [m for info in getattr(current, "__metadata__", ()) for m in info.metadata]
    low = next((f"{m.ge}" for m in metadata if getattr(m, "ge", None) is not None), None)
    low = low or next((f">{m.gt}" for m in metadata if getattr(m, "gt", None) is not None), None)
    high = next((f"{m.le}" for m in metadata if getattr(m, "le", None) is not None), None)
    high = high or next((f"<{m.lt}" for m in metadata if getattr(m, "lt", None) is not None), None)
    if low is None and high is None:
        return None
    return f"{low or '-inf'}..{high or 'inf'}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model in `annotation` (itself, or the model inside `Model | None`)."""
    candidates = (annotation, *getattr(annotation, "__args__", ()))
    for item in candidates:
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def format_validation_error(model: type[BaseModel], error: ValidationError) -> str:
    """Turn a pydantic error into one line per problem: `field.path: problem (allowed a..b)`."""
    lines = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        path = ".".join(str(part) for part in loc) or "config"
        message = item["msg"]
        allowed = bounds_of(model, loc) if item["type"] in _RANGE_ERRORS else None
        if allowed is not None:
            message += f" (allowed range {allowed})"
        if "input" in item and item["type"] in _RANGE_ERRORS:
            message += f", got {item['input']!r}"
        lines.append(f"{path}: {message}")
    return "; ".join(lines)


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Preprocessing(_Strict):
    """How volumes become 2D slices for the model.

    Slices are kept as acquired along `slice_axis` (no through-plane resampling), so a slice index
    in the uploaded array maps to exactly one prepared slice.
    """

    spacing_mm: InPlaneSpacing = (0.95, 0.95)
    """In-plane spacing of the 2D slices (rows, cols), mm; one number means both."""
    slice_axis: Literal[0, 1, 2] = 2
    """Canonical RAS axis the slices are taken along (2 = axial)."""
    clip_percentiles: tuple[Percentile, Percentile] = (1.0, 99.0)
    """Intensities are clipped to these percentiles, then scaled to [0, 1]."""

    @model_validator(mode="after")
    def _ordered_percentiles(self) -> Preprocessing:
        low, high = self.clip_percentiles
        if not low < high:
            raise ValueError(
                f"clip_percentiles must be increasing (low < high), got ({low}, {high})"
            )
        return self


class GatingConfig(_Strict):
    """SpotTUnet gating: which policy chooses between the frozen and the trainable twins."""

    policy: PolicyKind = "instance"
    temperature: float = Field(default=0.1, gt=0.0, le=10.0)
    """Gumbel-softmax temperature (the paper keeps 0.1 fixed)."""
    agent_stride: int | None = Field(default=None, ge=1, le=64)
    """Instance policy: average-pooling stride of the agent's input, the same in training and at
    inference. None (models saved before it existed): any input is pooled to 32x32."""


class ModelConfig(_Strict):
    """Everything needed to rebuild a network: architecture, preprocessing and gating."""

    architecture: Literal["residual-unet-2d"] = "residual-unet-2d"
    in_channels: int = Field(default=1, ge=1, le=4)
    width: int = Field(default=16, ge=1, le=128)
    """Channels of the top level; doubled at each downsampling."""
    depth: int = Field(default=3, ge=1, le=6)
    """Number of downsamplings (the bottleneck's stride-2 conv included)."""
    blocks_per_stage: int = Field(default=3, ge=1, le=8)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    gating: GatingConfig | None = None
    """None: plain U-Net. Set: SpotTUNet (frozen + trainable twins and its policy)."""

    @model_validator(mode="after")
    def _bounded_size(self) -> ModelConfig:
        deepest = self.width * 2**self.depth
        if deepest > MAX_DEEPEST_CHANNELS:
            raise ValueError(
                f"width * 2**depth = {self.width} * 2**{self.depth} = {deepest} channels at the "
                f"deepest stage exceeds {MAX_DEEPEST_CHANNELS}; lower width or depth"
            )
        return self

    @property
    def size_multiple(self) -> int:
        """Slice height and width must be multiples of this (pixels)."""
        return int(2**self.depth)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelConfig:
        """Parse and validate a JSON config; raises ConfigError naming the field at fault."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as error:
            raise ConfigError(
                f"invalid model config: {format_validation_error(cls, error)}"
            ) from error

    @classmethod
    def checked(cls, **fields: Any) -> ModelConfig:
        """Build from keyword fields, raising ConfigError (not pydantic's error) when refused."""
        try:
            return cls(**fields)
        except ValidationError as error:
            raise ConfigError(
                f"invalid model config: {format_validation_error(cls, error)}"
            ) from error


def source_model_config(options: PretrainingOptions) -> ModelConfig:
    """The ModelConfig that pretraining `options` describe (raises if width/depth are refused)."""
    return ModelConfig.checked(
        width=options.width, depth=options.depth, blocks_per_stage=options.blocks_per_stage,
        preprocessing=Preprocessing(spacing_mm=options.spacing_mm, slice_axis=options.slice_axis),
    )

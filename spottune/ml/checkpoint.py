"""Weights as safetensors with the model config inside: nothing a user uploads is unpickled.

A checkpoint is a safetensors file whose metadata["spottune_config"] holds the ModelConfig JSON;
`save_checkpoint` also writes that JSON beside it. Loading checks every key, shape and dtype
against the model the config describes before any weight is copied.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from spottune.ml.config import ConfigError, ModelConfig
from spottune.ml.factory import build_model

CONFIG_KEY = "spottune_config"
_MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_INT_DTYPES = {"I8", "I16", "I32", "I64", "U8"}


class CheckpointError(ValueError):
    """Weights do not fit the model; the message names the first mismatching key."""


def weights_to_bytes(model: nn.Module, config: ModelConfig) -> bytes:
    """safetensors bytes of `model`'s state dict with `config` in metadata["spottune_config"]."""
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    return safetensors_save(state, metadata={CONFIG_KEY: config.to_json()})


def save_checkpoint(model: nn.Module, config: ModelConfig, path: Path) -> None:
    """Write `path` (.safetensors) and the config as `path.with_suffix(".json")`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(weights_to_bytes(model, config))
    path.with_suffix(".json").write_text(config.to_json())


def read_header(weights: bytes) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Parse the safetensors header: ({key: {"dtype", "shape", "data_offsets"}}, metadata)."""
    if len(weights) < 8:
        raise CheckpointError("not a safetensors file: shorter than its 8-byte header length")
    (size,) = struct.unpack("<Q", weights[:8])
    if size > _MAX_HEADER_BYTES or 8 + size > len(weights):
        raise CheckpointError("not a safetensors file: header length is out of range")
    try:
        header = json.loads(weights[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"not a safetensors file: header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise CheckpointError("not a safetensors file: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata


def config_from_weights(weights: bytes) -> ModelConfig | None:
    """The config stored in the weights' metadata, or None if there is none."""
    _, metadata = read_header(weights)
    text = metadata.get(CONFIG_KEY)
    if text is None:
        return None
    try:
        return ModelConfig.from_json(text)
    except ConfigError as error:
        raise CheckpointError(f"the config stored in the weights is invalid: {error}") from error


def validate_weights(weights: bytes, config: ModelConfig) -> None:
    """Check that `weights` hold exactly the tensors of build_model(config); cheap.

    The model is built on the "meta" device (no memory); raises CheckpointError naming the first
    missing or unexpected key, or wrong shape or dtype.
    """
    tensors, _ = read_header(weights)
    with torch.device("meta"):
        expected = build_model(config).state_dict()
    for key, reference in expected.items():
        entry = tensors.get(key)
        if entry is None:
            raise CheckpointError(f"missing key {key!r} (the config expects {len(expected)} keys)")
        shape = tuple(entry.get("shape", ()))
        if shape != tuple(reference.shape):
            raise CheckpointError(
                f"shape of {key!r} is {shape}, the config expects {tuple(reference.shape)}"
            )
        allowed = _FLOAT_DTYPES if reference.dtype.is_floating_point else _INT_DTYPES
        if entry.get("dtype") not in allowed:
            raise CheckpointError(
                f"dtype of {key!r} is {entry.get('dtype')}, expected one of {sorted(allowed)}"
            )
    unexpected = [key for key in tensors if key not in expected]
    if unexpected:
        raise CheckpointError(
            f"unexpected key {unexpected[0]!r} ({len(unexpected)} keys the config does not have)"
        )


def load_model(
    weights: bytes | Path, config: ModelConfig | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model from safetensors weights; returns (model in eval mode, its config).

    Without `config` the one stored in the weights' metadata is used, else the JSON beside a path.
    """
    json_beside = None
    if isinstance(weights, Path):
        json_beside = weights.with_suffix(".json")
        weights = weights.read_bytes()
    if config is None:
        config = config_from_weights(weights)
    if config is None and json_beside is not None and json_beside.is_file():
        try:
            config = ModelConfig.from_json(json_beside.read_text())
        except ConfigError as error:
            raise CheckpointError(f"{json_beside.name}: {error}") from error
    if config is None:
        raise CheckpointError(f"no model config: the weights carry no {CONFIG_KEY!r} metadata")
    validate_weights(weights, config)
    try:
        state = safetensors_load(weights)
    except Exception as error:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(f"corrupt safetensors data: {error}") from error
    model = build_model(config)
    reference = model.state_dict()
    state = {key: value.to(reference[key].dtype) for key, value in state.items()}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from spottune.ml.checkpoint import (
    CheckpointError,
    load_model,
    save_checkpoint,
    validate_weights,
    weights_to_bytes,
)
from spottune.ml.config import GatingConfig, ModelConfig
from spottune.ml.factory import build_model
from spottune.ml.network import UNet

PLAIN = ModelConfig(width=4, depth=2, blocks_per_stage=1)
GATED = PLAIN.model_copy(update={"gating": GatingConfig(policy="instance")})


def trained_like(config: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(config).train()
    with torch.no_grad():
        model(torch.rand(4, 1, 32, 32))  # move BatchNorm statistics away from defaults
    return model.eval()


@pytest.mark.parametrize("config", [PLAIN, GATED])
def test_round_trip_gives_the_same_outputs(config: ModelConfig, tmp_path: Path) -> None:
    model = trained_like(config)
    x = torch.rand(2, 1, 32, 32)
    restored, restored_config = load_model(weights_to_bytes(model, config))
    assert restored_config == config and not restored.training
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, config, path)
    assert ModelConfig.from_json(path.with_suffix(".json").read_text()) == config
    from_file, _ = load_model(path)
    with torch.no_grad():
        assert torch.equal(from_file(x), model(x))


def test_channels_last_model_saves() -> None:
    model = trained_like(PLAIN)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    restored, _ = load_model(weights_to_bytes(model, PLAIN))
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x))


def _state() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in trained_like(PLAIN).state_dict().items()}


def _bytes(state: dict[str, torch.Tensor], config: ModelConfig = PLAIN) -> bytes:
    return save(state, metadata={"spottune_config": config.to_json()})


def _without(key: str) -> bytes:
    state = _state()
    del state[key]
    return _bytes(state)


def _with_extra() -> bytes:
    return _bytes({**_state(), "init.conv.sneaky": torch.zeros(1)})


def _reshaped() -> bytes:
    state = _state()
    state["down1.down.conv.weight"] = torch.zeros(8, 4, 3, 3)
    return _bytes(state)


def _as_int() -> bytes:
    state = _state()
    state["skip.top.weight"] = state["skip.top.weight"].to(torch.int32)
    return _bytes(state)


# (weights, config to check against, words the error must contain)
MISMATCHES = [
    (lambda: _without("out.norm.running_var"), PLAIN, ["missing", "out.norm.running_var"]),
    (_with_extra, PLAIN, ["unexpected", "init.conv.sneaky"]),
    (_reshaped, PLAIN, ["down1.down.conv.weight", "(8, 4, 3, 3)", "(8, 4, 2, 2)"]),
    (_as_int, PLAIN, ["skip.top.weight", "I32"]),
    (lambda: _bytes(_state()), PLAIN.model_copy(update={"width": 8}),
     ["init.conv.weight", "(4, 1, 3, 3)", "(8, 1, 3, 3)"]),
    (lambda: _bytes(_state()), GATED, ["missing", "frozen.init.conv.weight"]),
]


@pytest.mark.parametrize(("make", "config", "words"), MISMATCHES)
def test_mismatching_weights_are_refused_naming_the_key(
    make: Callable[[], bytes], config: ModelConfig, words: list[str]
) -> None:
    weights = make()
    for check in (lambda: validate_weights(weights, config), lambda: load_model(weights, config)):
        with pytest.raises(CheckpointError) as error:
            check()
        for word in words:
            assert word in str(error.value)


@pytest.mark.parametrize(
    "weights",
    [b"", b"\x00" * 4, struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"nope",
     b"\x80\x04\x95pickle-not-safetensors"],
)
def test_garbage_is_refused(weights: bytes) -> None:
    with pytest.raises(CheckpointError):
        load_model(weights)


def test_weights_without_config_need_one(tmp_path: Path) -> None:
    weights = save({k: v.contiguous() for k, v in UNet(1, 4, 2, 1).state_dict().items()})
    with pytest.raises(CheckpointError, match="no model config"):
        load_model(weights)
    model, config = load_model(weights, PLAIN)
    assert config == PLAIN and isinstance(model, UNet)
    path = tmp_path / "bare.safetensors"
    path.write_bytes(weights)
    path.with_suffix(".json").write_text(PLAIN.to_json())
    assert load_model(path)[1] == PLAIN


def test_invalid_stored_config_is_a_checkpoint_error() -> None:
    bad = json.loads(PLAIN.to_json()) | {"width": 10_000_000}
    weights = save(_state(), metadata={"spottune_config": json.dumps(bad)})
    with pytest.raises(CheckpointError, match="width"):
        load_model(weights)

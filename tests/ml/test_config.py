from __future__ import annotations

import pytest

from spottune.ml.config import ConfigError, GatingConfig, ModelConfig, Preprocessing


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(width=8, depth=2, blocks_per_stage=1, in_channels=2),
        ModelConfig(gating=GatingConfig(policy="global", temperature=0.5)),
        ModelConfig(preprocessing=Preprocessing(spacing_mm=(1.0, 0.5), slice_axis=0)),
    ],
)
def test_json_round_trip(config: ModelConfig) -> None:
    assert ModelConfig.from_json(config.to_json()) == config
    assert ModelConfig.from_json(config.to_json().encode()) == config


# (fields, words the message must contain)
REFUSED = [
    ({"width": 10_000_000}, ["width", "allowed range 1..128", "10000000"]),
    ({"width": 0}, ["width", "1..128"]),
    ({"depth": 7}, ["depth", "1..6"]),
    ({"blocks_per_stage": 0}, ["blocks_per_stage", "1..8"]),
    ({"in_channels": 5}, ["in_channels", "1..4"]),
    ({"width": 128, "depth": 6}, ["width * 2**depth", "1024"]),
    ({"architecture": "vit"}, ["architecture"]),
    ({"colour": "blue"}, ["colour", "Extra inputs"]),
    ({"preprocessing": {"spacing_mm": [0.01, 1.0]}}, ["preprocessing.spacing_mm.0", "0.1..10.0"]),
    ({"preprocessing": {"slice_axis": 3}}, ["preprocessing.slice_axis"]),
    ({"preprocessing": {"clip_percentiles": [99, 1]}}, ["clip_percentiles", "increasing"]),
    ({"gating": {"temperature": 0}}, ["gating.temperature", "..10.0"]),
    ({"gating": {"policy": "random"}}, ["gating.policy"]),
]


@pytest.mark.parametrize(("fields", "words"), REFUSED)
def test_out_of_range_config_is_refused_with_a_clear_message(
    fields: dict[str, object], words: list[str]
) -> None:
    import json

    with pytest.raises(ConfigError) as from_json:
        ModelConfig.from_json(json.dumps(fields))
    with pytest.raises(ConfigError) as checked:
        ModelConfig.checked(**fields)
    for error in (from_json.value, checked.value):
        for word in words:
            assert word in str(error)


@pytest.mark.parametrize("text", ["{not json", "[]", "", '{"width": "wide"}'])
def test_malformed_json_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid model config"):
        ModelConfig.from_json(text)

"""The job contract as the library meets it: every method runs; one number is a spacing."""

from __future__ import annotations

import pytest

from spottune.contract import METHODS, AdaptationOptions, PretrainingOptions
from spottune.ml.config import ConfigError, ModelConfig, Preprocessing, source_model_config
from spottune.ml.network import UNet
from spottune.ml.preparation import PreparedVolume
from spottune.ml.train import adapt


@pytest.mark.parametrize("method", METHODS)
def test_every_contract_method_is_implemented(method: str,
                                              source_volumes: list[PreparedVolume]) -> None:
    config = ModelConfig(width=4, depth=2, blocks_per_stage=1)
    options = AdaptationOptions(iterations=1, batch_size=2, patch_size=16)
    result = adapt(UNet(1, 4, 2, 1), config, source_volumes[:1], method, options)
    assert result.method == method


def test_one_number_is_an_isotropic_spacing() -> None:
    assert Preprocessing(spacing_mm=2.0).spacing_mm == (2.0, 2.0)  # type: ignore[arg-type]
    assert ModelConfig.from_json('{"preprocessing": {"spacing_mm": 1.5}}').preprocessing \
        .spacing_mm == (1.5, 1.5)
    options = PretrainingOptions.model_validate({"spacing_mm": 3, "width": 4})
    assert source_model_config(options).preprocessing.spacing_mm == (3.0, 3.0)
    with pytest.raises(ConfigError, match="spacing_mm"):
        ModelConfig.from_json('{"preprocessing": {"spacing_mm": 50}}')


def test_source_config_refuses_what_the_model_refuses() -> None:
    with pytest.raises(ConfigError, match="width"):
        source_model_config(PretrainingOptions(width=128, depth=6))

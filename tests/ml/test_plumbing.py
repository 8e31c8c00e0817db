"""SpotTUnet's plumbing: with its gates fixed, it trains exactly like the matching fixed method.

If these fail, a difference between SpotTUnet and the baselines comes from the wiring (optimiser,
normalisation modes, which twin runs), not from the policy.
"""

from __future__ import annotations

import pytest
import torch

from spottune.ml.baselines import finetuned_units
from spottune.ml.device import seed_everything
from spottune.ml.network import UNet
from spottune.ml.policy import agent_stride_for
from spottune.ml.preparation import PreparedVolume
from spottune.ml.sampling import SliceSampler
from spottune.ml.spottune import SpotTUNet
from spottune.ml.train import (
    AdaptOptions,
    AdaptResult,
    SourceOptions,
    adapt,
    default_learning_rate,
    network_learning_rate,
    policy_learning_rate,
    train_gated,
    train_source,
)

OPTIONS = AdaptOptions(iterations=8, batch_size=4, learning_rate=0.05, lambda_reg=0.0, seed=3,
                       patch_size=32)


@pytest.fixture(scope="module")
def source(source_volumes: list[PreparedVolume]) -> AdaptResult:
    options = SourceOptions(width=4, depth=2, blocks_per_stage=1, patch_size=32, iterations=20,
                            batch_size=8, learning_rate=0.05, seed=0)
    return train_source(source_volumes, options)


@pytest.mark.parametrize("method", ["finetune-first", "finetune-all", "finetune-last"])
def test_fixed_gates_train_like_the_fixed_method(
    method: str, source: AdaptResult, target_volumes: list[PreparedVolume]
) -> None:
    base = source.model
    assert isinstance(base, UNet)
    fixed = adapt(base, source.config, target_volumes, method, OPTIONS)

    units = set(finetuned_units(base, method))
    decisions = torch.tensor([spec.name in units for spec in base.units])
    seed_everything(OPTIONS.seed)
    gated = SpotTUNet(base, decisions, OPTIONS.temperature)
    sampler = SliceSampler(target_volumes, 32, OPTIONS.batch_size, OPTIONS.seed)
    history = train_gated(gated, sampler, OPTIONS, OPTIONS.iterations, 0.0,
                          device=torch.device("cpu"))

    assert [h["loss"] for h in history] == pytest.approx(
        [h["loss"] for h in fixed.history], rel=1e-5, abs=1e-7)
    exported = gated.export().state_dict()
    for key, value in fixed.model.state_dict().items():
        torch.testing.assert_close(exported[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_learning_rates_follow_the_budget() -> None:
    assert default_learning_rate(6000) == pytest.approx(1e-3)
    assert default_learning_rate(200) == pytest.approx(0.05)
    assert default_learning_rate(20) == pytest.approx(0.05)  # clamped to the measured range
    assert default_learning_rate(100_000) == pytest.approx(1e-3)
    assert 1e-3 < default_learning_rate(1000) < 0.05
    options = AdaptOptions(iterations=6000)
    assert network_learning_rate(options) == pytest.approx(1e-3)
    assert policy_learning_rate(options) == pytest.approx(1e-2)  # the paper's 10x
    short = AdaptOptions(iterations=200)  # the CPU schedule chosen on validation: ratio 1
    assert policy_learning_rate(short) == pytest.approx(network_learning_rate(short)) == 0.05
    assert 0.01 < policy_learning_rate(AdaptOptions(iterations=1000)) < 0.05
    # an explicit network rate keeps the budget's ratio
    assert policy_learning_rate(AdaptOptions(iterations=6000, learning_rate=0.002)) == (
        pytest.approx(0.02))
    explicit = AdaptOptions(iterations=6000, learning_rate=0.02, policy_learning_rate=0.5)
    assert (network_learning_rate(explicit), policy_learning_rate(explicit)) == (0.02, 0.5)


def test_policy_learning_rate_decays_with_the_network(
    source: AdaptResult, target_volumes: list[PreparedVolume]
) -> None:
    """Both optimisers drop x0.1 at the same step: checked through the policy's own updates."""
    base = source.model
    assert isinstance(base, UNet)
    gated = SpotTUNet(base, "global", 0.1)
    sampler = SliceSampler(target_volumes, 32, 4, 0)
    seen: list[float] = []
    options = AdaptOptions(iterations=8, batch_size=4, learning_rate=0.01,
                           policy_learning_rate=0.3, policy_weight_decay=0.0, lambda_reg=0.0)
    original_step = torch.optim.SGD.step

    def spy(self: torch.optim.SGD, closure: object = None) -> object:
        if any(p is gated.policy.logits for g in self.param_groups for p in g["params"]):
            seen.append(self.param_groups[0]["lr"])
        return original_step(self, closure)  # type: ignore[arg-type]

    torch.optim.SGD.step = spy  # type: ignore[method-assign]
    try:
        train_gated(gated, sampler, options, 8, 0.0, device=torch.device("cpu"))
    finally:
        torch.optim.SGD.step = original_step  # type: ignore[method-assign]
    assert seen == pytest.approx([0.3] * 6 + [0.03] * 2)


def test_agent_sees_one_scale_in_training_and_inference(
    source: AdaptResult, target_volumes: list[PreparedVolume]
) -> None:
    """The instance agent pools by a stride fixed from the training patch, saved in the config, so
    a whole slice at inference is seen at the scale of the training patches."""
    base = source.model
    assert isinstance(base, UNet)
    options = AdaptOptions(iterations=2, batch_size=4, learning_rate=0.05, patch_size=16)
    result = adapt(base, source.config, target_volumes, "spottune", options)
    assert result.config.gating is not None
    assert result.config.gating.agent_stride == agent_stride_for(16) == 1
    model = result.model
    assert isinstance(model, SpotTUNet)
    # a 32x32 slice reaches the agent at 32x32 (stride 1), not squeezed to the patch's size
    seen: list[tuple[int, ...]] = []
    hook = model.policy.stem.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    with torch.no_grad():
        model(torch.zeros(2, 1, 32, 32))
    hook.remove()
    assert seen == [(2, 1, 32, 32)]
    assert agent_stride_for(64) == 2 and agent_stride_for(256) == 8


@pytest.mark.parametrize("shape", [(88, 104), (36, 20), (40, 24), (72, 56)])
def test_agent_accepts_whole_slices_of_any_padded_size(shape: tuple[int, int]) -> None:
    """Whole slices (cropped to the head, padded to the U-Net's multiple) reach the agent at
    sizes that halve to odd numbers; every stride-2 block must still line up."""
    from spottune.ml.policy import InstancePolicy

    for stride in (1, 2, 8):
        agent = InstancePolicy(5, 1, stride).eval()
        with torch.no_grad():
            assert agent(torch.rand(2, 1, *shape)).shape == (2, 5, 2)

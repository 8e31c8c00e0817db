from __future__ import annotations

import pytest
import torch

from spottune.ml.config import GatingConfig, ModelConfig
from spottune.ml.factory import build_model
from spottune.ml.network import UNet, count_parameters
from spottune.ml.spottune import SpotTUNet

# (UNet arguments, input shape, expected output shape)
SHAPES = [
    ({"width": 4, "depth": 2, "blocks_per_stage": 1}, (2, 1, 32, 32), (2, 1, 32, 32)),
    ({"width": 4, "depth": 3, "blocks_per_stage": 2}, (1, 1, 32, 48), (1, 1, 32, 48)),
    ({"width": 8, "depth": 1, "blocks_per_stage": 1}, (3, 1, 16, 16), (3, 1, 16, 16)),
    ({"width": 4, "depth": 2, "blocks_per_stage": 1, "in_channels": 2}, (2, 2, 32, 32),
     (2, 1, 32, 32)),
]


@pytest.mark.parametrize(("kwargs", "in_shape", "out_shape"), SHAPES)
def test_output_shape(kwargs: dict[str, int], in_shape: tuple[int, ...],
                      out_shape: tuple[int, ...]) -> None:
    net = UNet(**kwargs)
    assert net(torch.rand(in_shape)).shape == out_shape
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(in_shape)).shape == out_shape


def test_every_parameter_gets_a_gradient() -> None:
    net = UNet(width=4, depth=2, blocks_per_stage=1)
    net(torch.rand(2, 1, 32, 32)).mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing


def test_paper_sized_gates_and_names() -> None:
    with torch.device("meta"):
        net = UNet(width=16, depth=3, blocks_per_stage=3)
    names = [spec.name for spec in net.units]
    assert len(names) == 33  # the paper's 32 + the final BatchNorm with its own gate
    assert names[:5] == ["init.conv", "init.block0", "init.block1", "init.block2", "down1.down"]
    assert names[12:17] == ["bottleneck.down", "bottleneck.block0", "bottleneck.block1",
                            "bottleneck.block2", "bottleneck.up"]
    assert names[-6:] == ["out.block2", "out.conv", "out.norm", "skip.top", "skip.down1",
                          "skip.down2"]
    assert [stage for _, stage, _ in net.gates][-3:] == ["skip"] * 3
    assert net.stage_names == ["init", "down1", "down2", "bottleneck", "up2", "up1", "out"]
    # Every parameter belongs to exactly one gated unit.
    for key in net.state_dict():
        assert sum(key.startswith(name + ".") for name in names) == 1, key


def test_paper_sized_parameter_count() -> None:
    with torch.device("meta"):
        net = UNet(width=16, depth=3, blocks_per_stage=3)
    assert 1.5e6 < count_parameters(net) < 1.65e6  # the paper: about 1.6 M


def test_channels_last_gives_the_same_output() -> None:
    net = UNet(width=4, depth=2, blocks_per_stage=1).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = net(x)
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        got = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_input_not_a_multiple_of_two_to_the_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        UNet(width=4, depth=3, blocks_per_stage=1)(torch.rand(1, 1, 30, 32))


def test_build_model_is_the_single_factory() -> None:
    plain = build_model(ModelConfig(width=4, depth=2, blocks_per_stage=1))
    assert type(plain) is UNet
    gated = build_model(ModelConfig(width=4, depth=2, blocks_per_stage=1,
                                    gating=GatingConfig(policy="global", temperature=0.2)))
    assert isinstance(gated, SpotTUNet)
    assert gated.policy_kind == "global" and gated.temperature == 0.2

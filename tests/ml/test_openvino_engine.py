"""The OpenVINO engine: the same function as the torch U-Net, chosen only where it can run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spottune.ml.config import Preprocessing
from spottune.ml.inference import bf16_is_fast, predict_slices, segment_volume
from spottune.ml.metrics import dice
from spottune.ml.openvino_engine import OpenVinoUNet
from spottune.ml.preparation import prepare_volume
from spottune.ml.spottune import SpotTUNet
from spottune.ml.volumes import Volume
from tests.ml.helpers import unet_with_statistics


@pytest.mark.parametrize(
    "config",
    [{"width": 4, "depth": 2, "blocks_per_stage": 2},
     {"width": 8, "depth": 3, "blocks_per_stage": 1}],
)
def test_engine_computes_what_the_unet_computes(config: dict[str, int]) -> None:
    model = unet_with_statistics(0, conv_bias=True, **config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = OpenVinoUNet(model)
    for shape in ((3, 1, 24, 32), (2, 1, 16, 16)):  # a second shape compiles anew
        x = torch.randn(*shape)
        with torch.inference_mode():
            expected = torch.sigmoid(model.eval()(x)).numpy()
        got = engine(x.numpy())
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-5
    assert model.training is False  # eval() above, not the engine
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    engine.batch_size = 4  # a short batch is padded to the preferred batch, results unpadded
    x = torch.randn(3, 1, 24, 32)
    with torch.inference_mode():
        expected = torch.sigmoid(model(x)).numpy()
    assert np.abs(engine(x.numpy()) - expected).max() < 1e-5


def test_streams_give_the_same_bits_and_report_progress() -> None:
    model = unet_with_statistics(4, conv_bias=True, blocks_per_stage=1).eval()
    x = np.random.default_rng(1).random((7, 1, 24, 32)).astype(np.float32)
    one = OpenVinoUNet(model, threads=2, streams=1)
    two = OpenVinoUNet(model, threads=2)
    assert (one.streams, two.streams) == (1, 2)  # default: one stream per thread
    seen: list[tuple[int, int]] = []
    together = two(x, lambda done, total: seen.append((done, total)))
    assert np.array_equal(together, one(x))  # slices are independent: the same bits
    with torch.inference_mode():
        expected = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    assert np.abs(together - expected).max() < 1e-5
    assert seen[-1] == (7, 7) and all(t == 7 for _, t in seen)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen})  # increasing, never repeated
    assert two(x[:0]).shape == (0, 1, 24, 32)


def test_engine_bf16_is_close_and_follows_torch_threads() -> None:
    model = unet_with_statistics(1, conv_bias=True, blocks_per_stage=1).eval()
    x = np.random.default_rng(0).random((2, 1, 24, 24)).astype(np.float32)
    fp32 = OpenVinoUNet(model)(x)
    half = OpenVinoUNet(model, bf16=True)(x)
    assert np.abs(fp32 - half).max() < 0.05
    if bf16_is_fast(torch.device("cpu")):
        assert not np.array_equal(fp32, half)  # it did run in BF16
    threads = torch.get_num_threads()
    assert OpenVinoUNet(model).threads == threads  # the worker's torch thread cap holds here


def test_segment_volume_masks_agree_between_engines() -> None:
    model = unet_with_statistics(2, conv_bias=True, blocks_per_stage=1)
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in (40, 36, 30)), indexing="ij")
    image = (1000 * np.exp(-2 * sum(g**2 for g in grid))).astype(np.float32)
    volume = Volume(image, np.eye(4))
    prep = Preprocessing(spacing_mm=(1.0, 1.0))
    stack = prepare_volume(volume, prep).image
    with torch.no_grad():  # centre the untrained net's logits: half the voxels foreground
        median = float(np.median(predict_slices(model, stack, 8)))
        model.out.norm.bias -= np.log(median / (1 - median))
    kw = {"bf16": False, "largest_component": False, "locate": False}
    torch_mask = segment_volume(model, volume, prep, engine="torch", **kw)
    openvino_mask = segment_volume(model, volume, prep, engine="openvino", **kw)
    auto_mask = segment_volume(model, volume, prep, **kw)
    assert 0 < torch_mask.sum() < torch_mask.size  # a mask with a boundary to disagree on
    assert dice(openvino_mask, torch_mask) > 0.999
    assert np.array_equal(auto_mask, openvino_mask)  # auto: OpenVINO for a plain U-Net in FP32
    if bf16_is_fast(torch.device("cpu")):  # ... and torch in BF16, which stays closer to FP32
        half = kw | {"bf16": True}
        assert np.array_equal(segment_volume(model, volume, prep, **half),
                              segment_volume(model, volume, prep, engine="torch", **half))
    probs_torch = predict_slices(model, image[:, :32, :24].copy(), 4)
    probs_openvino = predict_slices(OpenVinoUNet(model), image[:, :32, :24].copy(), 4)
    assert np.abs(probs_torch - probs_openvino).max() < 1e-5


def test_engine_refuses_what_it_cannot_run() -> None:
    base = unet_with_statistics(3, conv_bias=True, blocks_per_stage=1)
    gated = SpotTUNet(base, "instance").eval()
    volume = Volume(np.ones((20, 20, 6), np.float32) * 100, np.eye(4))
    with pytest.raises(ValueError, match="plain U-Nets"):
        segment_volume(gated, volume, Preprocessing(), engine="openvino")
    with pytest.raises(ValueError, match="plain U-Nets"):
        OpenVinoUNet(gated)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown engine"):
        segment_volume(base, volume, Preprocessing(), engine="onnx")  # type: ignore[arg-type]
    # auto runs the gated model in torch
    assert segment_volume(gated, volume, Preprocessing()).shape == (20, 20, 6)

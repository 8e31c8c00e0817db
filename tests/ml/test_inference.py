"""Whole-volume inference: cropping, padding, batching and restoring onto the input grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spottune.ml.config import ModelConfig, Preprocessing
from spottune.ml.factory import build_model
from spottune.ml.fused import fused_copy, fused_spottune_copy
from spottune.ml.inference import (
    HEAD_MARGIN,
    LOCATE_STRIDE,
    bf16_is_fast,
    head_bounding_box,
    keep_largest_component,
    predict_slices,
    required_multiple,
    segment_volume,
)
from spottune.ml.metrics import dice
from spottune.ml.network import UNet
from spottune.ml.spottune import SpotTUNet
from spottune.ml.volumes import Volume
from tests.ml.helpers import unet_with_statistics


class Threshold(nn.Module):
    """Stands in for a trained net: logits are positive where the intensity exceeds 0.5."""

    depth = 3

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(40.0))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0
        self.seen.append(tuple(x.shape))
        return self.scale * (x - 0.5)


def _affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel axes pointing L, I, A (a common scanner orientation) with the given sizes."""
    affine = np.zeros((4, 4))
    affine[0, 0], affine[2, 1], affine[1, 2], affine[3, 3] = -spacing[0], -spacing[1], spacing[2], 1
    return affine


def _brain(shape: tuple[int, int, int]) -> np.ndarray:
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return np.asarray(sum(g**2 for g in grid) < 0.4, dtype=np.uint8)


def test_required_multiple_reads_depth() -> None:
    model = build_model(ModelConfig(width=4, depth=2, blocks_per_stage=1))
    assert required_multiple(model) == 4
    with pytest.raises(ValueError, match="depth"):
        required_multiple(nn.Conv2d(1, 1, 1))


def test_predict_slices_pads_batches_and_reports_progress() -> None:
    model = Threshold()
    slices = np.random.default_rng(0).random((5, 13, 21)).astype(np.float32)
    calls: list[tuple[int, int]] = []
    prob = predict_slices(model, slices, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert prob.shape == slices.shape and prob.dtype == np.float32
    assert np.array_equal(prob > 0.5, slices > 0.5)
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert model.seen == [(2, 1, 16, 24), (2, 1, 16, 24), (1, 1, 16, 24)]


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.2, 3.0)])
def test_segment_volume_returns_mask_on_input_grid(spacing: tuple[float, float, float]) -> None:
    shape = (30, 36, 20)
    brain = _brain(shape)
    image = brain * 900.0 + 20.0
    image[0, 0, 0] = 3000.0  # a hot outlier voxel must not upset cropping or scaling
    volume = Volume(image.astype(np.float32), _affine(spacing))
    prep = Preprocessing(spacing_mm=(0.95, 0.95))
    mask = segment_volume(Threshold(), volume, prep, batch_size=4)
    assert mask.dtype == np.uint8 and mask.shape == shape
    assert dice(mask, brain) > 0.97
    uncropped = segment_volume(Threshold(), volume, prep, crop=False)
    assert np.array_equal(mask, uncropped)


def test_segment_volume_keeps_largest_component_and_crops() -> None:
    shape = (24, 24, 64)
    image = np.zeros(shape, np.float32)
    image[4:20, 4:20, 30:50] = 1000.0
    image[1:3, 1:3, 32:34] = 1000.0  # a small separate blob
    model = Threshold()
    mask = segment_volume(model, Volume(image, np.eye(4)), Preprocessing(spacing_mm=(1.0, 1.0)),
                          locate=False)
    assert mask[4:20, 4:20, 30:50].all() and mask.sum() == 16 * 16 * 20
    # Only slices near the head were run through the model (axial slices 30..49 plus margin).
    assert sum(s[0] for s in model.seen) == 20 + 2 * HEAD_MARGIN
    both = keep_largest_component((image > 0).astype(np.uint8))
    assert both.sum() == 16 * 16 * 20


def test_empty_volume_gives_empty_mask() -> None:
    volume = Volume(np.zeros((16, 16, 8), np.float32), np.eye(4))
    assert head_bounding_box(np.zeros((8, 16, 16), np.float32)) is None
    assert not segment_volume(Threshold(), volume, Preprocessing()).any()


def test_real_unet_runs_and_keeps_training_mode() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=4, depth=3, blocks_per_stage=1))
    model.train()
    volume = Volume(_brain((24, 28, 12)).astype(np.float32) * 100, np.eye(4))
    mask = segment_volume(model, volume, Preprocessing(), batch_size=8)
    assert mask.shape == (24, 28, 12) and set(np.unique(mask).tolist()) <= {0, 1}
    assert model.training
    slices = np.random.default_rng(1).random((3, 24, 24)).astype(np.float32)
    fp32 = predict_slices(model, slices, 8)
    bf16 = predict_slices(model, slices, 8, bf16=True)
    assert np.abs(fp32 - bf16).max() < 0.1
    if not bf16_is_fast(torch.device("cpu")):  # no native BF16: FP32 instead of a crash
        assert np.array_equal(fp32, bf16)


def _head_with_brain(n_slices: int, brain_slices: slice) -> np.ndarray:
    """A head (dim tissue) through every axial slice, with a bright brain in `brain_slices`."""
    image = np.zeros((28, 28, n_slices), np.float32)
    image[2:26, 2:26, :] = 300.0  # scalp and skull: below the model's threshold once scaled
    image[6:22, 6:22, brain_slices] = 1000.0
    return image


def test_locating_pass_runs_fewer_slices_and_keeps_the_mask() -> None:
    image = _head_with_brain(96, slice(40, 60))
    prep = Preprocessing(spacing_mm=(1.0, 1.0))
    everywhere, located = Threshold(), Threshold()
    full = segment_volume(everywhere, Volume(image, np.eye(4)), prep, locate=False)
    calls: list[tuple[int, int]] = []
    mask = segment_volume(located, Volume(image, np.eye(4)), prep,
                          progress=lambda d, t: calls.append((d, t)))
    assert full.sum() == 16 * 16 * 20 and np.array_equal(mask, full)
    ran = sum(s[0] for s in located.seen)
    assert sum(s[0] for s in everywhere.seen) == 96
    # every 8th slice, then the brain's 20 slices and stride + margin on each side, none twice
    assert 96 // LOCATE_STRIDE + 20 <= ran <= 96 // LOCATE_STRIDE + 20 + 2 * (LOCATE_STRIDE + 4)
    assert calls[-1][0] == calls[-1][1] == ran  # progress ends at what ran


def test_locating_pass_falls_back_to_every_slice_when_sampling_misses_the_brain() -> None:
    image = _head_with_brain(96, slice(5, 8))  # thinner than the stride, between sampled slices
    prep = Preprocessing(spacing_mm=(1.0, 1.0))
    model = Threshold()
    mask = segment_volume(model, Volume(image, np.eye(4)), prep)
    assert mask.sum() == 16 * 16 * 3 and mask[6:22, 6:22, 5:8].all()
    assert sum(s[0] for s in model.seen) == 96


def test_fused_copy_computes_what_the_model_computes() -> None:
    model = unet_with_statistics(0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 1, 24, 32)
    with torch.inference_mode():
        expected = model(x)
        fused = fused_copy(model)
        got = fused(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    if bf16_is_fast(torch.device("cpu")):  # oneDNN runs BF16 convolutions only on such CPUs
        with torch.inference_mode():
            half = fused_copy(model, dtype=torch.bfloat16)(
                x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()
        assert (half - expected).abs().max() < 0.05 * expected.abs().max()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    assert not any(p.requires_grad for p in fused.parameters())


def test_predict_slices_fused_and_plain_agree() -> None:
    model = unet_with_statistics(1).eval()
    slices = np.random.default_rng(2).random((5, 24, 24)).astype(np.float32)
    plain = predict_slices(model, slices, 4, fuse=False)
    fused = predict_slices(model, slices, 4)
    assert np.abs(plain - fused).max() < 1e-5


def _instance_spottune(seed: int) -> SpotTUNet:
    """An instance-policy SpotTUNet whose twins differ and whose agent splits batches."""
    base = unet_with_statistics(seed).eval()
    assert isinstance(base, UNet)
    model = SpotTUNet(base, "instance")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable.parameters():
            p.add_(0.2 * torch.randn_like(p))
        model.policy.head.weight.mul_(200)  # type: ignore[operator]
        model.policy.head.bias.zero_()  # type: ignore[operator]
    return model.eval()


def test_instance_spottune_inference_copy_routes_and_agrees() -> None:
    """A gated model's fused copy picks the same twin per slice and computes what it computes;
    predict_slices leaves the model itself as it was (unfused, in its training mode)."""
    model = _instance_spottune(3)
    x = torch.rand(6, 1, 24, 32) * torch.arange(1, 7).view(6, 1, 1, 1) - 2
    with torch.inference_mode():
        expected, gates = model.forward_with_gates(x)
        copy = fused_spottune_copy(model)
        got, copy_gates = copy.forward_with_gates(x.contiguous(memory_format=torch.channels_last))
    assert ((gates.sum(0) > 0) & (gates.sum(0) < 6)).any()  # slices took different twins
    assert torch.equal(gates, copy_gates)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    model.train()
    slices = x[:, 0].numpy()
    fused = predict_slices(model, slices, 4)
    plain = predict_slices(model, slices, 4, fuse=False)
    assert np.abs(plain - fused).max() < 1e-4
    assert model.training and not model.frozen.training  # modes kept ("source" frozen norm)
    assert type(model.trainable.init.block0) is not type(copy.trainable.init.block0)

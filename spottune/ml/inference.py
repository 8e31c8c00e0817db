"""Whole-volume segmentation with a 2D slice model.

Speed on CPU comes from computing the network only where the brain can be, and cheaply there:

* the slice stack is cropped to the head's bounding box (air costs as much as brain);
* a locating pass runs the model on every `LOCATE_STRIDE`-th slice only; the largest connected
  brain in those slices, widened by a margin, gives the range of slices the second pass runs
  (no slice is computed twice; outside the range the probability is 0, which the final
  largest-component step would have removed anyway). Only slices are skipped: cropping in-plane
  would change what the network sees near the crop's edges, and so its output;
* slices are batched, tensors channels-last, inference mode; with BF16 (CPUs with AVX-512 BF16 or
  AMX, GPUs) the plain U-Net runs as a BF16 copy of itself, which moves half the bytes of FP32
  and of autocast (whose norms and residual sums stay FP32); in either precision its residual
  blocks run fused (fused.py);
* in FP32 on a CPU a plain U-Net runs as an OpenVINO-compiled graph of itself
  (openvino_engine.py; engine "auto"): the same masks, 1.3x faster than torch here. BF16 stays in
  torch unless engine "openvino" is asked for (faster again, but further from FP32: see
  check_engine); an instance-policy SpotTUNet, or engine "torch", runs in torch.

Probabilities are put back on the input's voxel grid before thresholding so the mask is as smooth
as the in-plane resampling allows. bench/speed.py measures each lever and the masks' agreement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from spottune.contract import SegmentationOptions
from spottune.ml.config import Preprocessing
from spottune.ml.fused import fused_copy, fused_spottune_copy
from spottune.ml.network import UNet
from spottune.ml.openvino_engine import OpenVinoUNet
from spottune.ml.preparation import prepare_volume, restore_to_grid
from spottune.ml.spottune import SpotTUNet
from spottune.ml.volumes import Volume

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Engine = Literal["auto", "torch", "openvino"]
ENGINES: tuple[Engine, ...] = ("auto", "torch", "openvino")

DEFAULT_BATCH = SegmentationOptions().batch_size  # 8, the contract's default
"""Slices per forward pass. On a 2-core AVX-512/AMX CPU, 256x256-class slices at batch 8 ran
1.7x faster than at batch 32 (activations of a 32-slice batch overflow the caches); on a GPU it
is still enough to keep the device busy for this 1.5 M-parameter net (bench/speed.py)."""
LOCATE_STRIDE = 8  # the locating pass runs every 8th slice
LOCATE_SLICE_MARGIN = 4  # slices kept beyond the located range (besides the stride itself)
HEAD_THRESHOLD = 0.05  # scaled intensity above which a voxel counts as head, not air
HEAD_MARGIN = 8  # pixels (and slices) kept around the head's bounding box
_MIN_SHARE = 0.002  # rows/columns with fewer head voxels than this share are noise, not head


def required_multiple(model: nn.Module) -> int:
    """The factor H and W must be multiples of: 2**depth of the (possibly wrapped) U-Net."""
    for candidate in (model, getattr(model, "base", None)):
        depth = getattr(candidate, "depth", None)
        if isinstance(depth, int):
            return int(2**depth)
    raise ValueError("cannot tell the model's depth; pass `multiple` explicitly")


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether BF16 autocast pays off on `device`: CUDA with BF16, or a CPU with native BF16
    (AVX-512 BF16 / AMX) as reported by oneDNN. Measured (bench/speed.py): 2.4x faster per
    slice on 2 Xeon cores with AMX, masks agreeing with FP32 at Dice > 0.999."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _bf16_runnable(bf16: bool, device: torch.device) -> bool:
    """BF16 if asked for and the device can run it at all: a CPU without native BF16 (oneDNN
    refuses BF16 convolutions there, e.g. AVX2-only) gets FP32, with a warning."""
    if bf16 and device.type == "cpu" and not bf16_is_fast(device):
        logger.warning("BF16 inference asked for, but this CPU has no native BF16 "
                       "(AVX-512 BF16 / AMX): running in FP32")
        return False
    return bf16


def _extent(counts: np.ndarray, margin: int) -> slice | None:
    """Index range where `counts` exceeds a small share of its peak, widened by `margin`."""
    keep = np.flatnonzero(counts > max(0.0, _MIN_SHARE * counts.max()))
    if keep.size == 0:
        return None
    return slice(max(0, int(keep[0]) - margin), min(counts.size, int(keep[-1]) + 1 + margin))


def head_bounding_box(
    image: np.ndarray, threshold: float = HEAD_THRESHOLD, margin: int = HEAD_MARGIN
) -> tuple[slice, slice, slice] | None:
    """Bounding box of the head in a prepared stack [S, H, W] (intensities in [0, 1]), or None.

    Scattered noise voxels are ignored: a row, column or slice counts only if it holds more than
    a small share of the busiest one's head voxels.
    """
    head = image > threshold
    if not head.any():
        return None
    boxes = [_extent(head.sum(axis=other), margin) for other in ((1, 2), (0, 2), (0, 1))]
    if any(box is None for box in boxes):
        return None
    s, h, w = boxes
    assert s is not None and h is not None and w is not None
    return (s, h, w)


def _inference_copy(model: nn.Module, bf16: bool, device: torch.device) -> nn.Module | None:
    """A fused channels-last copy (BF16 or FP32; see fused.py) of a plain U-Net or a SpotTUNet
    (whose policy stays FP32), or None for other models: they run as they are, under autocast
    for BF16."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    if type(model) is UNet:
        return fused_copy(model, dtype=dtype, device=device)
    if type(model) is SpotTUNet:
        return fused_spottune_copy(model, dtype=dtype, device=device)
    return None


def check_engine(model: nn.Module, device: torch.device, engine: Engine,
                 bf16: bool = False) -> bool:
    """Whether `engine` runs `model` in OpenVINO: "openvino" (a plain U-Net on the CPU, else
    ValueError), "auto" (a plain U-Net on the CPU in FP32), "torch" (never). ValueError for an
    unknown engine.

    Why auto keeps BF16 in torch: on 10 benchmark heads OpenVINO's FP32 masks equal torch's
    (Dice >= 0.99999), but its BF16 masks agree with FP32 less than torch's BF16 masks do on 9
    of 10 (at worst Dice 0.978 against torch's 0.986), though they come 1.6x faster. The
    precision flag is the accuracy-for-speed choice; the engine does not lower it further
    unless asked (engine "openvino").
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "torch":
        return False
    runnable = type(model) is UNet and device.type == "cpu"
    if engine == "openvino" and not runnable:
        raise ValueError("the OpenVINO engine runs plain U-Nets on the CPU (pretrained models, "
                         "fine-tuned ones, exported global policies); this is a "
                         f"{type(model).__name__} on {device.type}: use engine torch or auto")
    return runnable and (engine == "openvino" or not bf16)


def openvino_copy(model: nn.Module, bf16: bool, device: torch.device,
                  engine: Engine) -> OpenVinoUNet | None:
    """The OpenVINO engine for `model` where `engine` asks for it (check_engine), else None."""
    if not check_engine(model, device, engine, bf16):
        return None
    assert isinstance(model, UNet)
    return OpenVinoUNet(model, bf16=bf16)


def _predict_openvino(net: OpenVinoUNet, slices: np.ndarray,
                      progress: Progress | None) -> np.ndarray:
    multiple = 2**net.depth
    _, height, width = slices.shape
    pad = ((0, 0), (0, -height % multiple), (0, -width % multiple))
    # the engine's own batch and streams (the contract's batch_size is torch's)
    x = np.pad(slices.astype(np.float32, copy=False), pad)[:, None]
    return net(x, progress)[:, 0, :height, :width]


@torch.inference_mode()
def predict_slices(
    model: nn.Module | OpenVinoUNet,
    slices: np.ndarray,
    batch_size: int = DEFAULT_BATCH,
    device: torch.device | str | None = None,
    *,
    multiple: int | None = None,
    bf16: bool = False,
    fuse: bool = True,
    progress: Progress | None = None,
) -> np.ndarray:
    """Foreground probability for every pixel of a slice stack.

    Args:
        model: network mapping [B, 1, H, W] to logits [B, 1, H, W], or an OpenVinoUNet (which
            maps them to probabilities; batch size, device, bf16 and fuse are then its own).
        slices: float32 [S, H, W] prepared slices.
        batch_size: slices per forward pass.
        device: where to run; defaults to the model's device.
        multiple: pad H, W up to a multiple of this; defaults to 2**model.depth.
        bf16: run in BF16 (CPU AVX-512 BF16 / AMX, CUDA); faster, slightly less exact.
        fuse: run a plain U-Net as its fused inference copy (fused.py); same function up to
            float rounding. A model that already is such a copy runs as it is with fuse=False.
        progress: called with (slices done, total slices) after each batch.

    Returns:
        float32 [S, H, W] probabilities.
    """
    if slices.ndim != 3:
        raise ValueError(f"expected slices [S, H, W], got {slices.shape}")
    if isinstance(model, OpenVinoUNet):
        return _predict_openvino(model, slices, progress)
    device = torch.device(device) if device is not None else _model_device(model)
    bf16 = _bf16_runnable(bf16, device)
    multiple = multiple or required_multiple(model)
    n, height, width = slices.shape
    pad_h, pad_w = -height % multiple, -width % multiple
    out = np.empty(slices.shape, dtype=np.float32)
    was_training = model.training
    model.eval()
    source = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    net = (_inference_copy(model, bf16, device) if fuse else None) or model
    param = next(net.parameters(), None)
    half = param is not None and param.dtype == torch.bfloat16  # a BF16 copy takes BF16 input
    try:
        for start in range(0, n, batch_size):
            x = source[start : start + batch_size].unsqueeze(1).to(device)
            x = F.pad(x, (0, pad_w, 0, pad_h)).contiguous(memory_format=torch.channels_last)
            if half:
                x = x.to(torch.bfloat16)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and not half):
                logits = net(x)
            prob = torch.sigmoid(logits.float())[:, 0, :height, :width]
            out[start : start + prob.shape[0]] = prob.cpu().numpy()
            if progress is not None:
                progress(min(start + batch_size, n), n)
    finally:
        model.train(was_training)
    return out


def predict_located(
    predict: Callable[[np.ndarray, Progress | None], np.ndarray],
    stack: np.ndarray,
    *,
    stride: int = LOCATE_STRIDE,
    slice_margin: int = LOCATE_SLICE_MARGIN,
    progress: Progress | None = None,
) -> np.ndarray:
    """Probabilities for a slice stack [S, H, W], running `predict` only on slices near the brain.

    `predict(slices, progress)` maps [N, H, W] to probabilities. First every `stride`-th slice is
    predicted; the largest connected foreground of those slices (taken as one sparse stack) gives
    the brain's range of slices, widened by `stride + slice_margin` on each side. Then the other
    slices of that range are predicted; slices outside it are 0. Slices are independent for a 2D
    model, so every predicted slice is exactly what predicting the whole stack gives it. A stack
    too thin to sample, or with no foreground on any sampled slice, is predicted whole.
    `progress(done, total)` counts slices, the total as planned so far.
    """
    n = stack.shape[0]
    probs = np.zeros(stack.shape, dtype=np.float32)
    sampled = np.arange(stride // 2, n, stride)
    if sampled.size < 3:
        probs[:] = predict(stack, progress)
        return probs
    rest = np.setdiff1d(np.arange(n), sampled)

    def counted(offset: int, total: int) -> Progress | None:
        if progress is None:
            return None
        return lambda done, _: progress(offset + done, total)

    probs[sampled] = predict(stack[sampled], counted(0, n))
    labels, count = ndimage.label(probs[sampled] >= 0.5)
    if count == 0:
        probs[rest] = predict(stack[rest], counted(sampled.size, n))
        return probs
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    hit = sampled[np.flatnonzero((labels == int(sizes.argmax())).any(axis=(1, 2)))]
    reach = stride + slice_margin
    first, last = max(0, int(hit[0]) - reach), min(n, int(hit[-1]) + reach + 1)
    inside = rest[(rest >= first) & (rest < last)]
    logger.debug("located the brain on slices %d:%d of %d", first, last, n)
    if inside.size:
        probs[inside] = predict(stack[inside], counted(sampled.size, sampled.size + inside.size))
    return probs


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 6-connected foreground component of a 3D binary mask."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(sizes.argmax())).astype(np.uint8)


def segment_volume(
    model: nn.Module,
    volume: Volume,
    prep: Preprocessing,
    *,
    batch_size: int = DEFAULT_BATCH,
    largest_component: bool = True,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    bf16: bool | None = None,
    crop: bool = True,
    locate: bool = True,
    fuse: bool = True,
    multiple: int | None = None,
    engine: Engine = "auto",
) -> np.ndarray:
    """Segment a whole volume; returns a uint8 mask [X, Y, Z] on the volume's own voxel grid.

    Slices outside the head's bounding box (when `crop`) are background without running the
    model; with `locate` the model runs only around the brain found on every LOCATE_STRIDE-th
    slice (predict_located); `fuse` runs a plain U-Net's residual blocks fused (fused.py).
    `progress(done, total)` counts slices. `bf16` None: BF16 where the
    device runs it natively (bf16_is_fast), FP32 elsewhere. `engine`: see check_engine; "auto"
    runs a plain U-Net on the CPU in FP32 in OpenVINO (`fuse` is then moot).
    """
    target = torch.device(device) if device is not None else _model_device(model)
    bf16 = bf16_is_fast(target) if bf16 is None else _bf16_runnable(bf16, target)
    # one inference copy for both passes of the locating path (made first: a model the engine
    # cannot run is refused before any work)
    net: nn.Module | OpenVinoUNet = (
        openvino_copy(model, bool(bf16), target, engine)
        or (_inference_copy(model, bf16, target) if fuse else None) or model)
    prepared = prepare_volume(volume, prep)
    probs = np.zeros(prepared.image.shape, dtype=np.float32)
    box = head_bounding_box(prepared.image) if crop else (slice(None),) * 3
    if box is None:
        logger.warning("no head found in the volume; returning an empty mask")
        if progress is not None:
            progress(0, 0)
    else:
        logger.debug("inference on %s of %s", prepared.image[box].shape, prepared.image.shape)

        def predict(slices: np.ndarray, report: Progress | None) -> np.ndarray:
            return predict_slices(net, slices, batch_size, target, multiple=multiple,
                                  bf16=bool(bf16), fuse=False, progress=report)

        head = prepared.image[box]
        probs[box] = (predict_located(predict, head, progress=progress) if locate
                      else predict(head, progress))
    mask = (restore_to_grid(prepared, probs) >= 0.5).astype(np.uint8)
    return keep_largest_component(mask) if largest_component and mask.any() else mask

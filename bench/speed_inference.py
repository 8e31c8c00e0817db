"""Speed benchmark, inference: one whole head segmented along the default path and its levers."""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from speed_timing import Threads, timed
from torch import nn

from spottune.contract import POLICY_KINDS, AdaptationOptions, PretrainingOptions
from spottune.data.manifest import read_manifest
from spottune.ml.checkpoint import load_model, save_checkpoint
from spottune.ml.config import ModelConfig, Preprocessing
from spottune.ml.inference import keep_largest_component, segment_volume
from spottune.ml.metrics import dice
from spottune.ml.network import UNet
from spottune.ml.openvino_engine import OpenVinoUNet
from spottune.ml.preparation import PreparedVolume, prepare_volume, restore_to_grid
from spottune.ml.synthetic import make_phantom
from spottune.ml.train import adapt, train_source
from spottune.ml.volumes import Volume, load_mask, load_volume

log = logging.getLogger("bench.speed")
HEAD_SHAPE = (176, 208, 176)  # 1 mm head volume (voxels)
PHANTOM_AIR = 12  # voxels of air padded around the phantom head on each side


def head_volume(data_dir: Path) -> tuple[Volume, np.ndarray, Volume, np.ndarray, str]:
    """(test volume, its mask, a training volume, its mask, description)."""
    if (data_dir / "manifest.json").is_file():
        manifest = read_manifest(data_dir)
        same = manifest.scans_of(manifest.scans[0].site)[:2]
        loaded = []
        for scan in same:
            volume = load_volume(manifest.image_path(scan))
            loaded.append((volume, load_mask(manifest.mask_path(scan), volume).astype(np.uint8)))
        (test, test_mask), (train, train_mask) = loaded[0], loaded[-1]
        return test, test_mask, train, train_mask, f"{same[0].id} from {data_dir}"
    inner = tuple(n - 2 * PHANTOM_AIR for n in HEAD_SHAPE)
    out = []
    for seed in (0, 1):
        image, mask = make_phantom(inner, seed=seed, site="a")  # type: ignore[arg-type]
        pad = [(PHANTOM_AIR, PHANTOM_AIR)] * 3
        out.append((Volume(np.pad(image, pad), np.eye(4)), np.pad(mask, pad)))
    return (
        *out[0],
        *out[1],
        f"phantom {HEAD_SHAPE} with {PHANTOM_AIR} voxels of air around the head",
    )


def trained_base(
    train: PreparedVolume, checkpoint: Path, quick: bool
) -> tuple[UNet, ModelConfig, str]:
    """A width-16 U-Net trained briefly on `train` (cached at `checkpoint`)."""
    if checkpoint.is_file():
        model, config = load_model(checkpoint)
        assert isinstance(model, UNet)
        return model.eval(), config, f"loaded {checkpoint}"
    options = PretrainingOptions(
        patch_size=96, batch_size=8, iterations=120 if quick else 300, learning_rate=0.05, seed=0
    )
    start = time.perf_counter()
    result = train_source([train], options, device="cpu")
    assert isinstance(result.model, UNet)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(result.model, result.config, checkpoint)
    took = time.perf_counter() - start
    return (
        result.model,
        result.config,
        (
            f"trained {options.iterations} steps (patch 96, batch 8) "
            f"in {took:.0f} s, cached at {checkpoint}"
        ),
    )


def naive_segment(
    model: nn.Module, volume: Volume, prep: Preprocessing, device: torch.device
) -> np.ndarray:
    """The "before" path: eager FP32, contiguous, one slice per forward, no crop."""
    prepared = prepare_volume(volume, prep)
    stack = prepared.image
    multiple = 2**3
    pad_h, pad_w = -stack.shape[1] % multiple, -stack.shape[2] % multiple
    probs = np.zeros(stack.shape, dtype=np.float32)
    model.eval()
    with torch.no_grad():
        for s in range(stack.shape[0]):
            x = torch.from_numpy(np.pad(stack[s], ((0, pad_h), (0, pad_w))))[None, None]
            logits = model(x.to(device))
            probs[s] = torch.sigmoid(logits)[0, 0, : stack.shape[1], : stack.shape[2]].cpu().numpy()
    mask = (restore_to_grid(prepared, probs) >= 0.5).astype(np.uint8)
    return keep_largest_component(mask)


DEFAULT_CHECKPOINT = Path(tempfile.gettempdir()) / "spottune-speed-model.safetensors"


def checkpoint_for(data_dir: Path, checkpoint: Path = DEFAULT_CHECKPOINT) -> Path:
    """Where the speed model for `data_dir` is cached: one file for the benchmark heads, another
    for the phantom used without them."""
    kind = "data" if (data_dir / "manifest.json").is_file() else "phantom"
    return checkpoint.with_name(f"{checkpoint.stem}-{kind}{checkpoint.suffix}")


def speed_model(data_dir: Path, checkpoint: Path, quick: bool) -> tuple[UNet, ModelConfig, str]:
    """The benchmark's model: loaded from `checkpoint`, or trained on the training head and
    cached there (the whole-process comparison runs it from that file)."""
    _, _, train_volume, train_mask, _ = head_volume(data_dir)
    prepared_train = prepare_volume(train_volume, Preprocessing(), train_mask)
    return trained_base(prepared_train, checkpoint, quick)


def bench_inference(
    device: torch.device, quick: bool, data_dir: Path, checkpoint: Path
) -> dict[str, Any]:
    volume, reference, train_volume, train_mask, described = head_volume(data_dir)
    prep = Preprocessing()
    prepared_train = prepare_volume(train_volume, prep, train_mask)
    base, config, how = trained_base(prepared_train, checkpoint, quick)
    base = base.to(device).eval()
    log.info("base model: %s", how)
    few = AdaptationOptions(iterations=2, batch_size=4, patch_size=64, seed=0)
    adapted = {
        policy: adapt(
            base,
            config,
            [prepared_train],
            "spottune",
            few.model_copy(update={"policy": policy}),
            device=device,
        ).model.to(device)
        for policy in POLICY_KINDS
    }
    models = {
        "base": base,
        "spottune-global-exported": adapted["global"],
        "spottune-instance": adapted["instance"],
    }
    repeats = 1 if quick else 3
    rows: list[dict[str, Any]] = []

    def add(
        name: str,
        model_name: str,
        fn: Callable[[], Any],
        reps: int,
        threads: int | None,
        warmup: int = 1,
    ) -> dict[str, Any]:
        with Threads(threads):
            result = timed(fn, device, reps, warmup)
        row = {
            "device": device.type,
            "variant": name,
            "model": model_name,
            "threads": threads or torch.get_num_threads(),
            **result,
        }
        rows.append(row)
        log.info("infer %-28s %-26s %.2f s", name, model_name, result["median_s"])
        return row

    def default(model: nn.Module, **kw: Any) -> Callable[[], np.ndarray]:
        return lambda: segment_volume(model, volume, prep, device=device, **kw)

    add(
        "before: eager fp32 bs1 no-crop",
        "base",
        lambda: naive_segment(base, volume, prep, device),
        1,
        None,
        warmup=0,
    )
    for name, model in models.items():
        add("after: segment_volume default", name, default(model), repeats, None)
    # the previous default path: autocast BF16 where native, no fused blocks, no locating pass
    previous = {"fuse": False, "locate": False, "engine": "torch"}
    add("previous default (unfused, no locating pass)", "base", default(base, **previous),
        repeats, None)
    add("after, no locating pass", "base", default(base, locate=False), repeats, None)
    add("after, unfused", "base", default(base, fuse=False, engine="torch"), repeats, None)
    if device.type == "cpu":  # engine auto: OpenVINO for a plain U-Net in FP32, torch in BF16
        ov = {"engine": "openvino"}
        for name in ("base", "spottune-global-exported"):
            add("after, OpenVINO engine", name, default(models[name], **ov), repeats, None)
        add("after, bf16 off (OpenVINO)", "base", default(base, bf16=False), repeats, None)
        add("after, bf16 off, torch engine", "base", default(base, bf16=False, engine="torch"),
            repeats, None)
        add("previous, bf16 off", "base", default(base, bf16=False, **previous), repeats, None)
        if not quick:
            add("after, no crop", "base", default(base, crop=False), repeats, None)
        for threads in (1, 2) if not quick else (1,):
            add("after", "base", default(base), repeats, threads)
            add("after, OpenVINO engine", "base", default(base, **ov), repeats, threads)
            add("after, bf16 off (OpenVINO)", "base", default(base, bf16=False), repeats, threads)
        if not quick:
            for batch in (1, 4, 8):  # the OpenVINO engine's own batch (OpenVinoUNet.batch_size)
                with openvino_setting("batch_size", batch):
                    add(f"after, OpenVINO engine, batch {batch}", "base", default(base, **ov), 2,
                        None)
                    add(f"after, bf16 off (OpenVINO), batch {batch}", "base",
                        default(base, bf16=False), 1, None)
            # every thread on one request, as before the engine ran one stream per thread
            with openvino_setting("default_streams", 1):
                add("after, OpenVINO engine, 1 stream", "base", default(base, **ov), repeats,
                    None)
                add("after, bf16 off (OpenVINO), 1 stream", "base", default(base, bf16=False),
                    repeats, None)
            for batch in (1, 4, 16, 32):
                add(f"after, batch {batch}", "base", default(base, batch_size=batch), 2, None)
            rows.append(compiled_row(base, volume, prep, device))
    before = rows[0]["median_s"]
    base_after = next(r for r in rows if r["model"] == "base" and r["variant"].startswith("after:"))
    for row in rows:
        row["vs_base_after"] = round(row["median_s"] / base_after["median_s"], 3)
        row["speedup_vs_before"] = round(before / row["median_s"], 2)

    masks = {bf: segment_volume(base, volume, prep, device=device, bf16=bf) for bf in (False, True)}
    agreement_with_previous = mask_agreement(base, data_dir, prep, device, quick)
    agreement = {
        "dice_fp32_vs_bf16": round(dice(masks[False], masks[True]), 5),
        "dice_fp32_vs_reference": round(dice(masks[False], reference), 4),
        "dice_bf16_vs_reference": round(dice(masks[True], reference), 4),
        "voxels_differing": int((masks[False] != masks[True]).sum()),
    }
    log.info("bf16 agreement: %s", agreement)
    return {
        "volume": described,
        "shape": list(volume.shape),
        "model": how,
        "rows": rows,
        "bf16_agreement": agreement,
        "agreement_with_previous": agreement_with_previous,
    }


@contextlib.contextmanager
def openvino_setting(name: str, value: int) -> Iterator[None]:
    """OpenVinoUNet's class default `name` (batch_size, default_streams) set to `value` for the
    engines made inside the block."""
    before = getattr(OpenVinoUNet, name)
    setattr(OpenVinoUNet, name, value)
    try:
        yield
    finally:
        setattr(OpenVinoUNet, name, before)


def mask_agreement(
    model: nn.Module, data_dir: Path, prep: Preprocessing, device: torch.device, quick: bool
) -> dict[str, Any]:
    """Dice between the default path's masks and the previous paths' masks, per scan.

    Previous paths: FP32 (what `spottune segment` did by default) and autocast BF16 where native
    (what the service did), both unfused and without the locating pass, in torch. Today's paths
    (default: torch BF16 where native; FP32: OpenVINO on a CPU) and the other engine's are
    compared with the previous FP32 path.
    """
    if not (data_dir / "manifest.json").is_file():
        return {}
    manifest = read_manifest(data_dir)
    scans = manifest.scans[:: max(1, len(manifest.scans) // (3 if quick else 10))]
    rows = []
    for scan in scans:
        volume = load_volume(manifest.image_path(scan))
        now = segment_volume(model, volume, prep, device=device)
        now_fp32 = segment_volume(model, volume, prep, device=device, bf16=False)
        torch_fp32 = segment_volume(model, volume, prep, device=device, bf16=False,
                                    engine="torch")
        openvino = segment_volume(model, volume, prep, device=device, engine="openvino")
        before_fp32 = segment_volume(model, volume, prep, device=device, bf16=False,
                                     fuse=False, locate=False, engine="torch")
        before_auto = segment_volume(model, volume, prep, device=device, fuse=False,
                                     locate=False, engine="torch")
        rows.append({
            "scan": scan.id,
            "default_vs_previous_fp32": round(dice(now, before_fp32), 5),
            "default_vs_previous_default": round(dice(now, before_auto), 5),
            "fp32_vs_previous_fp32": round(dice(now_fp32, before_fp32), 5),
            "torch_fp32_vs_previous_fp32": round(dice(torch_fp32, before_fp32), 5),
            "openvino_default_vs_previous_fp32": round(dice(openvino, before_fp32), 5),
        })
        log.info("agreement %s", rows[-1])
    keys = [k for k in rows[0] if k != "scan"] if rows else []
    return {"scans": rows, "min": {k: min(r[k] for r in rows) for k in keys},
            "mean": {k: round(float(np.mean([r[k] for r in rows])), 5) for k in keys}}


def compiled_row(
    base: nn.Module, volume: Volume, prep: Preprocessing, device: torch.device
) -> dict[str, Any]:
    """segment_volume with a torch.compile'd model (compile time reported apart)."""
    try:
        compiled = torch.compile(copy.deepcopy(base), dynamic=False)
        start = time.perf_counter()
        segment_volume(compiled, volume, prep, device=device)  # compiles (both batch shapes)
        compile_s = time.perf_counter() - start
        result = timed(lambda: segment_volume(compiled, volume, prep, device=device), device, 2, 0)
        return {
            "device": device.type,
            "variant": "after + torch.compile",
            "model": "base",
            "threads": torch.get_num_threads(),
            "compile_s": round(compile_s, 1),
            **result,
        }
    except Exception as exc:  # no compiler, unsupported op: report, do not fail the bench
        log.warning("torch.compile failed: %s", exc)
        return {
            "device": device.type,
            "variant": "after + torch.compile",
            "model": "base",
            "threads": torch.get_num_threads(),
            "median_s": float("nan"),
            "error": str(exc),
        }

"""Speed benchmark: training steps and whole-volume inference, CPU (and CUDA when present).

Measures, as medians over repeats, in one run so ratios compare like with like:

* one training step (batch 16, 128x128 and 256x256) through the real `spottune.ml.loop.train_step`
  for finetune-all, SpotTUNet instance policy and SpotTUNet global policy, and finetune-all with
  glibc's default allocator (every large activation page-faulted again at every step);
* segmentation of one whole 1 mm head (a benchmark scan from --data if present, else a phantom
  with air around the head) with the default `segment_volume` path for the base model, the
  exported SpotTUNet-global model and the SpotTUNet-instance model;
* the "before" path (plain eager FP32, contiguous, one slice per forward, no crop) against the
  "after" default path, plus single levers (no BF16, 1 vs 2 threads, batch sizes, torch.compile);
* FP32 vs BF16 mask agreement (Dice) of a trained model.

    python bench/speed.py --quick          # ~1-2 min
    python bench/speed.py                  # full, ~5-8 min on 2 cores

Writes bench/results/speed-<machine>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spottune.ml.baselines import finetuned_units, freeze_except, train_mode_except
from spottune.ml.checkpoint import load_model, save_checkpoint
from spottune.ml.config import ModelConfig, Preprocessing
from spottune.ml.device import keep_freed_memory
from spottune.ml.inference import keep_largest_component, segment_volume
from spottune.ml.loop import autocast_dtype_for, nesterov_sgd, train_step
from spottune.ml.metrics import dice
from spottune.ml.network import UNet
from spottune.ml.preparation import PreparedVolume, prepare_volume, restore_to_grid
from spottune.ml.spottune import SpotTUNet
from spottune.ml.synthetic import make_phantom
from spottune.ml.train import AdaptOptions, SourceOptions, adapt, train_source
from spottune.ml.volumes import Volume, load_mask, load_volume

log = logging.getLogger("bench.speed")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HEAD_SHAPE = (176, 208, 176)  # 1 mm head volume (voxels)
PHANTOM_AIR = 12  # voxels of air padded around the phantom head on each side
TRAIN_METHODS = ("finetune-all", "spottune-instance", "spottune-global")


# ---------------------------------------------------------------- machine description


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_id(device: torch.device | None = None) -> str:
    """e.g. cpu-2core-xeon, cpu-2core-epyc; cuda-h100 when a GPU is used."""
    if device is not None and device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        tag = next((t for t in ("h200", "h100", "a100", "l4", "t4", "v100") if t in name), "gpu")
        return f"cuda-{tag}"
    model = cpu_model().lower()
    tag = next(
        (t for t in ("epyc", "xeon", "ryzen", "core", "graviton", "neoverse") if t in model),
        re.sub(r"[^a-z0-9]+", "", model)[:12] or "cpu",
    )
    return f"cpu-{os.cpu_count()}core-{tag}"


def machine_info() -> dict[str, Any]:
    flags = cpu_flags()
    return {
        "id": machine_id(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_features": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "torch": torch.__version__,
        "default_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- timing helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """Median wall seconds of `fn` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times_s": [round(t, 4) for t in times]}


class Threads:
    """Context manager: torch intra-op threads set to n (None: leave as is), restored after."""

    def __init__(self, n: int | None) -> None:
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


# ---------------------------------------------------------------- training step


def make_step(
    method: str, base: UNet, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One real training step (spottune.ml.loop.train_step) set up as train.adapt does."""
    dtype = autocast_dtype_for(device)
    if method == "finetune-all":
        model: nn.Module = copy.deepcopy(base).to(device)
        freeze_except(model, finetuned_units(model, "finetune-all"))  # type: ignore[arg-type]
        train_mode_except(model, [])  # type: ignore[arg-type]
        optimizers = [nesterov_sgd([p for p in model.parameters() if p.requires_grad], 1e-3)]
        lambda_reg = 0.0
    else:
        policy = method.split("-", 1)[1]
        spot = SpotTUNet(base, policy, 0.1).to(device)  # type: ignore[arg-type]
        spot.train()
        optimizers = [
            nesterov_sgd(list(spot.trainable.parameters()), 1e-3),
            nesterov_sgd(list(spot.policy.parameters()), 0.01, 1e-3),
        ]
        model, lambda_reg = spot, 0.005

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        return train_step(
            model, x, y, optimizers=optimizers, lambda_reg=lambda_reg, autocast_dtype=dtype
        )

    return step


def time_training_step(
    method: str, size: int, device: torch.device, repeats: int, warmup: int
) -> dict[str, Any]:
    """Median seconds of one step of `method` (batch 16, size x size) on the bench's U-Net."""
    torch.manual_seed(0)
    base = UNet(1, 16, 3, 3)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((16, 1, size, size), dtype=np.float32)).to(device)
    y = (x > 0.5).float()
    step = make_step(method, base, device)
    return timed(lambda: step(x, y), device, repeats, warmup)


def _in_fresh_process(method: str, size: int, repeats: int, warmup: int) -> dict[str, Any]:
    """time_training_step on CPU in a new interpreter that never touched the allocator: glibc's
    settings cannot be put back to their defaults once changed (the dynamic mmap threshold)."""
    code = (
        "import json, sys, torch; sys.path.insert(0, sys.argv[1]); import speed; "
        "torch.set_num_threads(int(sys.argv[6])); "
        "print(json.dumps(speed.time_training_step(sys.argv[2], int(sys.argv[3]), "
        "torch.device('cpu'), int(sys.argv[4]), int(sys.argv[5]))))"
    )
    argv = [sys.executable, "-c", code, str(Path(__file__).parent), method, str(size),
            str(repeats), str(warmup), str(torch.get_num_threads())]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def bench_training(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Training steps on the default path (freed memory kept, as the CLI and the worker run) and,
    on CPU, finetune-all once more with glibc's default allocator in a fresh process ("before")."""
    rows = []
    for size in (128, 256):
        runs = [(method, "kept") for method in TRAIN_METHODS]
        if device.type == "cpu" and not quick:
            runs.insert(0, ("finetune-all", "glibc default"))
        for method, allocator in runs:
            if quick and size == 256 and method == "spottune-instance" and device.type == "cpu":
                continue
            big_cpu = size == 256 and device.type == "cpu"
            repeats = (1 if big_cpu else 3) if quick else (2 if big_cpu else 5)
            warmup = 1 if not (quick and big_cpu) else 0
            if allocator == "kept":
                result = time_training_step(method, size, device, repeats, warmup)
            else:
                result = _in_fresh_process(method, size, repeats, warmup)
            rows.append(
                {"device": device.type, "size": size, "batch": 16, "method": method,
                 "allocator": allocator, **result}
            )
            log.info("train %s %d (%s): %.3f s", method, size, allocator, result["median_s"])
    for row in rows:
        ref = next(
            r for r in rows
            if r["size"] == row["size"] and r["method"] == "finetune-all"
            and r["allocator"] == "kept"
        )
        row["vs_finetune_all"] = round(row["median_s"] / ref["median_s"], 3)
    return rows


# ---------------------------------------------------------------- volumes and models


def head_volume(data_dir: Path) -> tuple[Volume, np.ndarray, Volume, np.ndarray, str]:
    """(test volume, its mask, a training volume, its mask, description)."""
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        scans = json.loads(manifest.read_text())["scans"]
        site = scans[0]["site"]
        same = [s for s in scans if s["site"] == site][:2]
        loaded = []
        for scan in same:
            volume = load_volume(data_dir / scan["image"])
            loaded.append((volume, load_mask(data_dir / scan["mask"], volume).astype(np.uint8)))
        (test, test_mask), (train, train_mask) = loaded[0], loaded[-1]
        return test, test_mask, train, train_mask, f"{same[0]['id']} from {data_dir}"
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
    options = SourceOptions(
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


# ---------------------------------------------------------------- inference


def bench_inference(
    device: torch.device, quick: bool, data_dir: Path, checkpoint: Path
) -> dict[str, Any]:
    volume, reference, train_volume, train_mask, described = head_volume(data_dir)
    prep = Preprocessing()
    prepared_train = prepare_volume(train_volume, prep, train_mask)
    base, config, how = trained_base(prepared_train, checkpoint, quick)
    base = base.to(device).eval()
    log.info("base model: %s", how)
    few = AdaptOptions(iterations=2, batch_size=4, patch_size=64, seed=0)
    adapted = {
        policy: adapt(
            base,
            config,
            [prepared_train],
            "spottune",
            few.model_copy(update={"policy": policy}),
            device=device,
        ).model.to(device)
        for policy in ("global", "instance")
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
    if device.type == "cpu":
        add("after, bf16 off", "base", default(base, bf16=False), repeats, None)
        if not quick:
            add("after, no crop", "base", default(base, crop=False), repeats, None)
        for threads in (1, 2) if not quick else (1,):
            add("after", "base", default(base), repeats, threads)
        if not quick:
            for batch in (1, 4, 16, 32):
                add(f"after, batch {batch}", "base", default(base, batch_size=batch), 2, None)
            rows.append(compiled_row(base, volume, prep, device))
    before = rows[0]["median_s"]
    base_after = next(r for r in rows if r["model"] == "base" and r["variant"].startswith("after:"))
    for row in rows:
        row["vs_base_after"] = round(row["median_s"] / base_after["median_s"], 3)
        row["speedup_vs_before"] = round(before / row["median_s"], 2)

    masks = {bf: segment_volume(base, volume, prep, device=device, bf16=bf) for bf in (False, True)}
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
    }


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


# ---------------------------------------------------------------- report


def _compile_note(row: dict[str, Any]) -> str:
    return f" (+compile {row['compile_s']} s)" if "compile_s" in row else ""


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"## Speed on {m['id']} ({m['cpu_model']}, {m['cores']} cores, torch {m['torch']}, "
        f"{m['default_threads']} threads; load avg before {result['load_before']})",
        "",
        "| device | step (batch 16) | size | allocator | median s | x finetune-all |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['device']} | {r['method']} | {r['size']} | {r.get('allocator', '-')} | "
        f"{r['median_s']:.3f} | {r['vs_finetune_all']:.2f} |"
        for r in result["training"]
    ]
    for dev in result["inference"]:
        inf = result["inference"][dev]
        lines += [
            "",
            f"Whole volume {inf['shape']} ({inf['volume']}); model: {inf['model']}",
            "",
            "| device | variant | model | threads | median s | x base (after) | "
            "speed-up vs before |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['device']} | {r['variant']} | {r['model']} | {r['threads']} | "
            f"{r['median_s']:.2f}{_compile_note(r)} | "
            f"{r.get('vs_base_after', float('nan')):.2f} | "
            f"{r.get('speedup_vs_before', float('nan')):.1f} |"
            for r in inf["rows"]
        ]
        lines += ["", f"BF16 vs FP32 masks: {inf['bf16_agreement']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1-2 min: fewer repeats")
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / "data" / "bench",
        help="benchmark data (manifest.json); a phantom head is used if absent",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=Path(tempfile.gettempdir()) / "spottune-speed-model.safetensors",
        help="trained model for the BF16 check (trained and cached if missing)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/)")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.data.is_file():
        args.data = args.data.parent
    checkpoint = args.checkpoint.with_name(
        f"{args.checkpoint.stem}-{'data' if (args.data / 'manifest.json').is_file() else 'phantom'}"
        f"{args.checkpoint.suffix}"
    )
    result: dict[str, Any] = {
        "machine": machine_info(),
        "mode": "quick" if args.quick else "full",
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "training": [],
        "inference": {},
    }
    keep_freed_memory()  # as the CLI and the worker run
    start = time.perf_counter()
    for device in devices:
        if not args.skip_training:
            result["training"] += bench_training(device, args.quick)
        result["inference"][device.type] = bench_inference(
            device, args.quick, args.data, checkpoint
        )
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - start, 1)
    out = args.out or RESULTS / f"speed-{machine_id(devices[-1])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"\nwrote {out} in {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed benchmark: training steps and whole-volume inference, CPU (and CUDA when present).

Measures, as medians over repeats, in one run so ratios compare like with like:

* one training step (batch 16, 128x128 and 256x256) through the real `spottune.ml.loop.train_step`
  for finetune-all, SpotTUNet instance policy and SpotTUNet global policy, and finetune-all with
  glibc's default allocator (every large activation page-faulted again at every step);
* segmentation of one whole 1 mm head (a benchmark scan from --data if present, else a phantom
  with air around the head) with the default `segment_volume` path for the base model, the
  exported SpotTUNet-global model and the SpotTUNet-instance model;
* the "before" path (plain eager FP32, contiguous, one slice per forward, no crop) against the
  "after" default path (BF16 in torch where native; FP32 on a CPU runs a plain U-Net in
  OpenVINO), plus single levers (engines, no BF16, 1 vs 2 threads, batch sizes, torch.compile);
* FP32 vs BF16 mask agreement (Dice) of a trained model.

    python bench/speed.py --quick          # ~1-2 min
    python bench/speed.py                  # full, ~5-8 min on 2 cores

Writes bench/results/speed-<machine>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helper modules beside this file

from speed_inference import (  # noqa: E402
    DEFAULT_CHECKPOINT,
    bench_inference,
    checkpoint_for,
    speed_model,
)
from speed_process import bench_processes  # noqa: E402
from speed_training import bench_training  # noqa: E402

from spottune.ml.device import keep_freed_memory  # noqa: E402
from spottune.ml.inference import bf16_is_fast  # noqa: E402
from spottune.ml.machine import machine_id, machine_info  # noqa: E402

log = logging.getLogger("bench.speed")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _compile_note(row: dict[str, Any]) -> str:
    return f" (+compile {row['compile_s']} s)" if "compile_s" in row else ""


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    threads = m.get("torch_threads", m.get("default_threads"))  # older files: default_threads
    lines = [
        f"## Speed on {m['id']} ({m['cpu_model']}, {m['cores']} cores, torch {m['torch']}, "
        f"{threads} threads; load avg before {result['load_before']})",
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
        if inf.get("agreement_with_previous"):
            lines += [f"Default path vs previous paths, Dice (min over scans): "
                      f"{inf['agreement_with_previous']['min']}"]
    whole = result.get("whole_process")
    if whole:
        lines += ["", f"Whole process, {len(whole['scans'])} 1 mm heads x "
                  f"{whole['repeats_per_scan']} runs (deepbet: {whole['deepbet']['status']})", "",
                  "| command | median s | min s | max s | runs |", "|---|---|---|---|---|"]
        times = {k: v for k, v in whole["summary"].items() if k != "ratio_to_deepbet"}
        lines += [f"| {tool} | {s['median_s']:.2f} | {s['min_s']:.2f} | {s['max_s']:.2f} | "
                  f"{s['runs']} |" for tool, s in times.items()]
        if "ratio_to_deepbet" in whole["summary"]:
            lines += ["", "Median / deepbet's median: " + ", ".join(
                f"{tool} {ratio}" for tool, ratio in whole["summary"]["ratio_to_deepbet"].items())]
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
        default=DEFAULT_CHECKPOINT,
        help="trained model for the BF16 check (trained and cached if missing)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-process", action="store_true",
                        help="skip the whole-process comparison with deepbet")
    parser.add_argument("--process-only", action="store_true",
                        help="only the whole-process comparison with deepbet")
    parser.add_argument("--training-only", action="store_true",
                        help="only the training steps")
    parser.add_argument("--deepbet-env", type=Path, default=ROOT / "bench" / ".deepbet-venv",
                        help="deepbet's own environment (made on first use)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.data.is_file():
        args.data = args.data.parent
    checkpoint = checkpoint_for(args.data, args.checkpoint)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "mode": "quick" if args.quick else "full",
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "training": [],
        "inference": {},
    }
    keep_freed_memory()  # as the CLI and the worker run
    start = time.perf_counter()
    for device in devices if not args.process_only else []:
        if not args.skip_training:
            result["training"] += bench_training(device, args.quick)
        if not args.training_only:
            result["inference"][device.type] = bench_inference(
                device, args.quick, args.data, checkpoint
            )
    if (not args.skip_process and not args.training_only
            and (args.data / "manifest.json").is_file()):
        if not checkpoint.is_file():  # --process-only on a fresh machine: train it first
            log.info("model for the whole processes: %s",
                     speed_model(args.data, checkpoint, args.quick)[2])
        result["whole_process"] = bench_processes(
            args.data, checkpoint, 1 if args.quick else 3, args.deepbet_env,
            bf16=bf16_is_fast(devices[0]))
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

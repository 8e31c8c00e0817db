"""Can BF16 inference be checked against FP32 cheaply? How far BF16 is from FP32, pixel by pixel.

BF16 runs the U-Net about twice as fast as FP32 on CPUs with native BF16, but its masks miss the
speed issue's Dice 0.999 against FP32 on some heads. A checked BF16 would run BF16 everywhere, then
run again in FP32 only the slices where BF16 could have thresholded differently: a pixel can flip
only if its BF16 probability lies nearer 0.5 than the BF16 error. This program measures, per scan
(both precisions in OpenVINO, the same located slices as `spottune segment`):

- the BF16 error (max and 99.9th percentile of |p_bf16 - p_fp32| on the head), the pixels whose
  mask flips and the Dice of the BF16 mask against the FP32 one on the model's grid;
- for uncertainty bands |p - 0.5| < band: how many pixels lie in the band, and how many slices a
  check would have to run again in FP32 so that the band pixels left on unchecked slices are at
  most 0.0005 x 2|mask| (a guaranteed Dice >= 0.9995 if the error stays below the band).

Mask counts only: no timing, so it may run beside other work. Writes
results/precision-<machine>.json.

    .venv/bin/python bench/speed_precision.py [--checkpoint MODEL] [--scans 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from speed_inference import checkpoint_for, speed_model  # noqa: E402

from spottune.data.manifest import read_manifest  # noqa: E402
from spottune.ml.inference import (  # noqa: E402
    bf16_is_fast,
    head_bounding_box,
    predict_located,
    predict_slices,
)
from spottune.ml.machine import machine_id, machine_info  # noqa: E402
from spottune.ml.openvino_engine import OpenVinoUNet  # noqa: E402
from spottune.ml.preparation import prepare_volume  # noqa: E402
from spottune.ml.volumes import load_volume  # noqa: E402

log = logging.getLogger("bench.precision")
BANDS = (0.02, 0.05, 0.1)
TOLERANCE = 0.0005


def slices_to_check(uncertain: np.ndarray, budget: float) -> int:
    """Fewest slices, most uncertain first, whose re-run leaves at most `budget` band pixels."""
    if uncertain.sum() <= budget:
        return 0
    left = uncertain.sum() - np.cumsum(np.sort(uncertain)[::-1])
    return int(np.argmax(left <= budget)) + 1


def scan_row(fp32: OpenVinoUNet, bf16: OpenVinoUNet, image: np.ndarray) -> dict[str, Any]:
    box = head_bounding_box(image)
    assert box is not None
    head = image[box]
    p32 = predict_located(lambda s, _: predict_slices(fp32, s), head)
    p16 = predict_located(lambda s, _: predict_slices(bf16, s), head)
    error = np.abs(p32 - p16)
    m32, m16 = p32 >= 0.5, p16 >= 0.5
    foreground = int(m32.sum())
    predicted = int(p16.reshape(p16.shape[0], -1).any(axis=1).sum())
    row: dict[str, Any] = {
        "slices": int(head.shape[0]),
        "predicted_slices": predicted,
        "max_error": round(float(error.max()), 4),
        "p999_error": round(float(np.quantile(error[p32 > 0.01], 0.999)), 4),
        "flipped_pixels": int((m32 != m16).sum()),
        "mask_pixels": foreground,
        "dice_bf16_vs_fp32": round(2 * float((m32 & m16).sum()) / float(m32.sum() + m16.sum()), 5),
        "bands": {},
    }
    for band in BANDS:
        uncertain = (np.abs(p16 - 0.5) < band).sum(axis=(1, 2))
        row["bands"][str(band)] = {
            "band_pixels": int(uncertain.sum()),
            "slices_to_check": slices_to_check(uncertain, TOLERANCE * 2 * foreground),
            "error_below_band": bool(error.max() < band),
        }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the speed benchmark's model (trained and cached if missing) "
                             "[bench/speed.py's]")
    parser.add_argument("--scans", type=int, default=10, help="scans, spread over the sites")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    import torch

    if not bf16_is_fast(torch.device("cpu")):
        print("this CPU has no native BF16: nothing to measure")
        return 0
    checkpoint = args.checkpoint or checkpoint_for(args.data)
    model, config, how = speed_model(args.data, checkpoint, quick=False)
    log.info("model: %s", how)
    fp32, bf16 = OpenVinoUNet(model.eval(), bf16=False), OpenVinoUNet(model, bf16=True)
    manifest = read_manifest(args.data)
    scans = manifest.scans[:: max(1, len(manifest.scans) // args.scans)][: args.scans]
    rows = []
    for scan in scans:
        prepared = prepare_volume(load_volume(manifest.image_path(scan)), config.preprocessing)
        rows.append({"scan": scan.id, "site": scan.site,
                     **scan_row(fp32, bf16, prepared.image)})
        log.info("%s", json.dumps(rows[-1]))
    share = {band: round(float(np.mean([r["bands"][str(band)]["slices_to_check"]
                                        / r["predicted_slices"] for r in rows])), 3)
             for band in BANDS}
    result = {
        "machine": machine_info(),
        "model": how,
        "tolerance": TOLERANCE,
        "scans": rows,
        "summary": {
            "dice_bf16_vs_fp32_min": min(r["dice_bf16_vs_fp32"] for r in rows),
            "dice_bf16_vs_fp32_mean": round(float(np.mean([r["dice_bf16_vs_fp32"]
                                                           for r in rows])), 5),
            "scans_below_0.999": sum(int(r["dice_bf16_vs_fp32"] < 0.999) for r in rows),
            "max_error": max(r["max_error"] for r in rows),
            "mean_share_of_predicted_slices_to_check": share,
        },
    }
    out = args.out or ROOT / "bench" / "results" / f"precision-{machine_id()}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

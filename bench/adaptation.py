"""Few-shot adaptation benchmark: the paper's protocol on the `spottune data prepare` sites.

For each ordered source -> target site pair and seed: a source model trained on the source site's
subjects is adapted with every method to every k-th slice of ONE target-site subject (budgets of
about 5, 12, 45, 90 slices, and the whole volume), then tested on target-site subjects of the OTHER
heads (never a deformation of the training subject). "none" is the source model as is; "oracle" is
trained on every target-site scan that is not a test scan. Nothing is tuned on the test
subjects. Dice and surface Dice (1 mm) are computed in 3D on each test scan's own grid.

    python bench/adaptation.py --profile quick --jobs 2   # 2-core CPU, under an hour
    python bench/adaptation.py --profile paper            # GPU, the reference schedule
    python bench/adaptation.py --profile smoke --max-minutes 5

Writes bench/results/adaptation-<profile>.json (rows + machine + profile) and .md (the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helper modules beside this file

from adaptation_profiles import PROFILES, WHOLE_VOLUME, Profile  # noqa: E402
from adaptation_table import markdown_report  # noqa: E402

from spottune.ml.config import Preprocessing  # noqa: E402
from spottune.ml.device import pick_device  # noqa: E402
from spottune.ml.inference import segment_volume  # noqa: E402
from spottune.ml.metrics import dice, surface_dice  # noqa: E402
from spottune.ml.train import (  # noqa: E402
    AdaptOptions,
    AdaptResult,
    Progress,
    SourceOptions,
    adapt,
    train_source,
)
from spottune.ml.volumes import (  # noqa: E402
    PreparedVolume,
    Volume,
    load_mask,
    load_volume,
    prepare_volume,
    slice_voxel_axis,
)

log = logging.getLogger("bench.adaptation")
RESULTS = Path(__file__).resolve().parent / "results"
# method label -> (train.adapt method, extra AdaptOptions); "none" and "oracle" are handled apart
ADAPT_METHODS: dict[str, tuple[str, dict[str, object]]] = {
    "finetune-all": ("finetune-all", {}),
    "finetune-first": ("finetune-first", {}),
    "finetune-last": ("finetune-last", {}),
    "spottune": ("spottune", {"policy": "instance"}),
    "spottune-global": ("spottune", {"policy": "global"}),
    "spottune-adabn": ("spottune", {"policy": "instance", "adabn": True}),
}


class Data:
    """The manifest's scans, loaded lazily and kept (volume, mask) by scan id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest = json.loads((root / "manifest.json").read_text())
        self.scans = {scan["id"]: scan for scan in self.manifest["scans"]}
        self._cache: dict[str, tuple[Volume, np.ndarray]] = {}

    def at(self, site: str, head: str | None = None) -> list[dict]:
        return sorted(
            (s for s in self.scans.values() if s["site"] == site and head in (None, s["head"])),
            key=lambda s: s["id"],
        )

    def heads(self) -> list[str]:
        return sorted({s["head"] for s in self.scans.values()})

    def load(self, scan_id: str) -> tuple[Volume, np.ndarray]:
        if scan_id not in self._cache:
            scan = self.scans[scan_id]
            volume = load_volume(self.root / scan["image"])
            self._cache[scan_id] = (volume, load_mask(self.root / scan["mask"], volume))
        return self._cache[scan_id]


def every_kth(n_slices: int, budget: str) -> list[int]:
    """Every k-th of `n_slices` slices, k chosen to give about `budget` slices, centred."""
    if budget == WHOLE_VOLUME:
        return list(range(n_slices))
    k = max(1, round(n_slices / int(budget)))
    return list(range(k // 2, n_slices, k))


def evaluate(
    model: torch.nn.Module,
    prep: Preprocessing,
    data: Data,
    test_ids: list[str],
    device: torch.device,
) -> list[tuple[str, float, float]]:
    """(scan id, Dice, surface Dice at 1 mm) of `model` on each test scan, on the scan's grid."""
    scores = []
    for scan_id in test_ids:
        volume, reference = data.load(scan_id)
        predicted = segment_volume(model, volume, prep, device=device).astype(bool)
        # surface Dice only looks near the surfaces: crop to both masks (+margin) to save time
        both = np.argwhere(predicted | reference)
        if both.size:
            lo, hi = np.maximum(both.min(0) - 3, 0), both.max(0) + 4
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            predicted, reference = predicted[box], reference[box]
        scores.append(
            (
                scan_id,
                dice(predicted, reference),
                surface_dice(predicted, reference, volume.spacing, tolerance_mm=1.0),
            )
        )
    return scores


def _train(volumes: list[PreparedVolume], profile: Profile, device: torch.device) -> AdaptResult:
    options = SourceOptions(
        width=profile.width,
        blocks_per_stage=profile.blocks_per_stage,
        spacing_mm=profile.spacing_mm,
        patch_size=profile.patch_size,
        iterations=profile.source_iterations,
        batch_size=profile.batch_size,
        learning_rate=profile.source_learning_rate,
        seed=0,
    )

    def report(progress: Progress) -> None:
        if progress.step % max(1, progress.total // 5) == 0:
            log.info(
                "  training step %d/%d, loss %.3f, %.0f s left",
                progress.step,
                progress.total,
                progress.loss or float("nan"),
                progress.eta_seconds or 0.0,
            )

    return train_source(volumes, options, device=device, progress=report)


class Bench:
    def __init__(
        self, data: Data, profile: Profile, device: torch.device, deadline: float, split: str
    ) -> None:
        self.data, self.profile, self.device, self.deadline = data, profile, device, deadline
        self.split = split
        self.prep = Preprocessing(spacing_mm=profile.spacing_mm)
        self.rows: list[dict] = []
        self._models: dict[tuple, AdaptResult] = {}
        self._evaluated: set[tuple[str, str, str]] = set()
        self.start = time.time()

    def prepared(
        self, scan_id: str, annotated: list[int] | None = None, labelled: bool = True
    ) -> PreparedVolume:
        volume, mask = self.data.load(scan_id)
        return prepare_volume(volume, self.prep, mask if labelled else None, annotated)

    def trained(self, key: tuple, scan_ids: list[str]) -> AdaptResult:
        """A model trained from scratch on `scan_ids` (all slices annotated), cached by `key`."""
        if key not in self._models:
            t0 = time.monotonic()
            self._models[key] = _train(
                [self.prepared(s) for s in scan_ids], self.profile, self.device
            )
            log.info(
                "trained %s on %d scans in %.0f s", key[:2], len(scan_ids), time.monotonic() - t0
            )
        return self._models[key]

    def record(
        self,
        method: str,
        budget: str | None,
        n_slices: int | None,
        source: str,
        target: str,
        seed: int | None,
        scores: list[tuple[str, float, float]],
    ) -> None:
        for scan_id, d, sd in scores:
            self.rows.append(
                {
                    "method": method,
                    "budget": budget,
                    "n_slices": n_slices,
                    "source_site": source,
                    "target_site": target,
                    "seed": seed,
                    "subject": self.data.scans[scan_id]["subject"],
                    "dice": d,
                    "sdice": sd,
                }
            )

    def out_of_time(self) -> bool:
        return time.time() > self.deadline

    def run_pair(self, index: int, source: str, target: str, seed: int) -> bool:
        """All methods and budgets for one pair and seed; False when the time limit cut it short.

        Split: the training subject comes from one head (chosen per pair, a different subject of
        it per seed); test subjects come from the other heads; the oracle trains on every
        target-site scan that is not a test scan. One source model per site and one oracle per
        target split, as in the paper; the seeds vary the adaptation.
        """
        heads = self.data.heads()
        train_head = heads[index % len(heads)]
        pool = [s["id"] for s in self.data.at(target, train_head)]
        train_id = pool[seed % len(pool)]
        # test: the first subjects of each other head; validation (for choosing settings): the
        # next ones, so that nothing is ever tuned on a test subject
        n = self.profile.test_per_head
        if self.split == "validation" and n is None:
            raise ValueError("--split validation needs a profile with test_per_head set: with "
                             "every subject a test subject there is nothing left to validate on")
        if n is None:
            window = slice(None)
        else:
            window = slice(0, n) if self.split == "test" else slice(n, 2 * n)
        test_ids = [
            s["id"]
            for h in heads
            if h != train_head
            for s in self.data.at(target, h)[window]
        ]
        if not test_ids:
            raise ValueError(f"no {self.split} subjects for {target}: too few scans per head")
        base = self.trained(("source", source), [s["id"] for s in self.data.at(source)])
        oracle_ids = [s["id"] for s in self.data.at(target) if s["id"] not in test_ids]
        oracle = self.trained(("oracle", target, tuple(test_ids)), oracle_ids)
        for label, model in (("none", base), ("oracle", oracle)):
            if (label, source, target) not in self._evaluated:
                self._evaluated.add((label, source, target))
                scores = evaluate(model.model, self.prep, self.data, test_ids, self.device)
                self.record(label, None, None, source, target, None, scores)
                log.info(
                    "%s->%s %s: sDice %.3f", source, target, label, np.mean([s[2] for s in scores])
                )
        volume, _ = self.data.load(train_id)
        n_axis = volume.shape[slice_voxel_axis(volume, self.prep)]
        # AdaBN sees the training subject's volume and other non-test target scans, unlabelled
        others = [s for s in pool if s != train_id]
        unlabelled_ids = [train_id, *others][: self.profile.unlabelled_volumes]
        unlabelled = [self.prepared(s, labelled=False) for s in unlabelled_ids]
        for budget in self.profile.budgets:
            slices = every_kth(n_axis, budget)
            train = [self.prepared(train_id, slices)]
            for label, (method, extra) in ADAPT_METHODS.items():
                if self.out_of_time():
                    return False
                t0 = time.monotonic()
                options = AdaptOptions(
                    iterations=self.profile.adapt_iterations,
                    batch_size=self.profile.batch_size,
                    learning_rate=self.profile.adapt_learning_rate,
                    patch_size=self.profile.patch_size,
                    seed=seed,
                    **extra,
                )
                result = adapt(
                    base.model,
                    base.config,
                    train,
                    method,
                    options,
                    unlabelled=unlabelled if options.adabn else (),
                    device=self.device,
                )
                t1 = time.monotonic()
                scores = evaluate(result.model, self.prep, self.data, test_ids, self.device)
                self.record(label, budget, len(slices), source, target, seed, scores)
                log.info(
                    "%s->%s seed %d budget %s (%d slices) %-15s sDice %.3f  adapt %.0f s, "
                    "test %.0f s, elapsed %.1f min",
                    source,
                    target,
                    seed,
                    budget,
                    len(slices),
                    label,
                    np.mean([s[2] for s in scores]),
                    t1 - t0,
                    time.monotonic() - t1,
                    (time.time() - self.start) / 60,
                )
        return True


def machine() -> dict[str, object]:
    info: dict[str, object] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclass(frozen=True)
class Group:
    """The share of the benchmark one process runs: some pairs (with their profile index)."""

    data_dir: Path
    profile: Profile
    pairs: tuple[tuple[int, str, str], ...]
    device: str | None
    deadline: float  # time.time() after which no new adaptation starts
    threads: int
    split: str = "test"  # "validation": score on held-out subjects that are never test subjects


def _setup(threads: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s: %(message)s")
    logging.getLogger("spottune").setLevel(logging.WARNING)
    torch.set_num_threads(threads)


def run_group(
    group: Group, checkpoint: Callable[[list[dict]], None] | None = None
) -> tuple[list[dict], bool]:
    """Run the group's pairs for every seed; returns (rows, complete)."""
    _setup(group.threads)
    bench = Bench(
        Data(group.data_dir), group.profile, pick_device(group.device), group.deadline, group.split
    )
    for seed in range(group.profile.seeds):
        for index, source, target in group.pairs:
            finished = bench.run_pair(index, source, target, seed)
            if checkpoint is not None:
                checkpoint(bench.rows)
            if not finished:
                log.warning("time limit reached: stopping with partial results")
                return bench.rows, False
    return bench.rows, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("data/bench"),
        help="the output directory of `spottune data prepare`",
    )
    parser.add_argument("--seeds", type=int, help="number of seeds (0..n-1) [profile's]")
    parser.add_argument("--pairs", help="source:target,... e.g. siemens15:philips3 [profile's]")
    parser.add_argument("--budgets", help="comma-separated, e.g. 5,12,volume [profile's]")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no new adaptation after this long; partial results are written",
    )
    parser.add_argument("--source-iterations", type=int, help="override the profile's")
    parser.add_argument("--adapt-iterations", type=int, help="override the profile's")
    parser.add_argument("--adapt-learning-rate", type=float, help="override the profile's")
    parser.add_argument(
        "--split",
        choices=("test", "validation"),
        default="test",
        help="validation: score on held-out non-test subjects, to choose settings "
        "(results go to adaptation-<profile>-validation.*)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... [auto]")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes, each running some of the pairs (CPU: one per core)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per process (1 avoids OpenMP stalls on a shared CPU)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    _setup(args.threads)
    profile = PROFILES[args.profile]
    if args.seeds:
        profile = dataclasses.replace(profile, seeds=args.seeds)
    if args.pairs:
        pairs = tuple(tuple(p.split(":")) for p in args.pairs.split(","))
        profile = dataclasses.replace(profile, pairs=pairs)  # type: ignore[arg-type]
    for field in ("source_iterations", "adapt_iterations", "adapt_learning_rate"):
        if getattr(args, field):
            profile = dataclasses.replace(profile, **{field: getattr(args, field)})
    if args.budgets:
        profile = dataclasses.replace(profile, budgets=tuple(args.budgets.split(",")))
    manifest = Data(args.data).manifest
    missing = {site for pair in profile.pairs for site in pair} - set(manifest["sites"])
    if missing:
        parser.error(f"sites {sorted(missing)} are not in {args.data}/manifest.json")
    start = time.time()
    deadline = start + (args.max_minutes * 60 if args.max_minutes else float("inf"))
    indexed = [(i, s, t) for i, (s, t) in enumerate(profile.pairs)]
    jobs = max(1, min(args.jobs, len(indexed)))
    groups = [
        Group(
            args.data, profile, tuple(indexed[j::jobs]), args.device, deadline, args.threads,
            args.split,
        )
        for j in range(jobs)
    ]
    device = str(pick_device(args.device))
    log.info(
        "profile %s on %s: %d pairs x %d seeds x %d budgets x %d methods, %d process(es)",
        args.profile,
        device,
        len(profile.pairs),
        profile.seeds,
        len(profile.budgets),
        len(ADAPT_METHODS),
        jobs,
    )

    def write(rows: list[dict], complete: bool) -> str:
        return write_results(
            rows,
            profile,
            args.profile if args.split == "test" else f"{args.profile}-validation",
            args.out,
            args.data,
            manifest,
            device,
            time.time() - start,
            complete,
        )

    if jobs == 1:
        rows, complete = run_group(groups[0], checkpoint=lambda r: write(r, False))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            results = list(pool.map(run_group, groups))
        rows = [row for group_rows, _ in results for row in group_rows]
        complete = all(done for _, done in results)
    print(write(rows, complete))
    return 0


def write_results(
    rows: list[dict],
    profile: Profile,
    name: str,
    out: Path,
    data_dir: Path,
    manifest: dict,
    device: str,
    elapsed: float,
    complete: bool,
) -> str:
    """Write adaptation-<name>.json and .md under `out`; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "profile": name,
        "settings": dataclasses.asdict(profile),
        "machine": machine(),
        "device": device,
        "data": str(data_dir),
        "data_seed": manifest.get("seed"),
        "elapsed_s": round(elapsed, 1),
        "complete": complete,
        "rows": rows,
    }
    (out / f"adaptation-{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    state = "" if complete else ", INCOMPLETE"
    title = f"Adaptation benchmark, profile {name} ({device}, {elapsed / 60:.1f} min{state})"
    table = markdown_report(rows, profile.budgets, title=title)
    (out / f"adaptation-{name}.md").write_text(table)
    return table


if __name__ == "__main__":
    raise SystemExit(main())

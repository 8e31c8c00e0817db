"""Few-shot adaptation benchmark (protocol v2) on the `spottune data prepare` sites.

Per source -> target pair, one fold per head: the head's target-site subjects are the test scans
and no model of the fold trains on that head (see adaptation_profiles.Profile). Each fold trains a
source model and an oracle, adapts the source model with every method to every k-th slice of one
target-site subject (5, 12, 45 slices, a whole volume), and scores every model on the test scans
and on validation scans of the other heads, all on the common 1 mm grid (Dice, surface Dice at 1
and 2 mm, HD95). The best fixed strategy per budget is chosen on validation, then compared on
test with hierarchical-bootstrap intervals.

    python bench/adaptation.py --profile cpu --jobs 2      # 2-core CPU, resumable
    python bench/adaptation.py --profile paper             # GPU, the reference schedule
    python bench/adaptation.py --profile smoke
    python bench/adaptation.py --profile cpu --table-only  # re-table what is cached

Every unit of work is cached under bench/results/cache/<profile>/ by its full settings, so a long
profile completes over several sittings. The cached results (small JSON files) are committed, so a
sitting on a fresh machine resumes too; model weights are not (a source model is retrained, with
its seed, when a remaining unit needs it). Writes bench/results/adaptation-<profile>.json (rows,
summary, best_fixed, policy_agreement, runs, machine) and .md (the tables).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helper modules beside this file

from adaptation_profiles import PROFILES, Profile, parse_budget  # noqa: E402
from adaptation_runs import Data, Runner, model_weights, plan, unit_key  # noqa: E402
from adaptation_stats import (  # noqa: E402
    plateau,
    policy_agreement,
    policy_signature,
    policy_variance,
    replicate_spread,
    summarise,
)
from adaptation_table import markdown_report  # noqa: E402

from spottune.ml.device import pick_device  # noqa: E402
from spottune.ml.machine import machine_info  # noqa: E402

log = logging.getLogger("bench.adaptation")
RESULTS = Path(__file__).resolve().parent / "results"

_RUNNER: Runner | None = None


def _init(data_dir: Path, cache: Path, profile: Profile, device: str, threads: int) -> None:
    global _RUNNER
    _setup(threads)
    _RUNNER = Runner(data_dir, cache, profile, device)


def _run(unit: dict[str, Any], deadline: float, restore: bool = False) -> dict[str, Any] | None:
    """Run (or, with `restore`, retrain the missing weights of) one unit in this process."""
    assert _RUNNER is not None
    if (restore or not _RUNNER.result_path(unit).is_file()) and time.time() > deadline:
        return None
    try:
        return _RUNNER.restore_model(unit) if restore else _RUNNER.run(unit)
    except Exception:  # one failing unit must not lose the others: it stays uncached, reported
        log.exception("unit %s failed", unit_key(unit))
        return None


def _setup(threads: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s: %(message)s")
    logging.getLogger("spottune").setLevel(logging.WARNING)
    torch.set_num_threads(threads)


def collect(units: list[dict[str, Any]], cache: Path, data: Data) -> tuple[list[dict], list[dict]]:
    """Rows (one per scored scan) and runs (one per adaptation, with its policy readout and mean
    test and validation sDice) of every cached unit. Each carries its `replicate` (0 but for
    SpotTUnet's extra replicates; see Profile.replicates)."""
    rows: list[dict] = []
    runs: list[dict] = []

    def add(unit: dict[str, Any], method: str, budget: Any, n_slices: int | None,
            scores: dict[str, dict[str, float]], split: str, seed: Any) -> None:
        for scan_id, s in scores.items():
            rows.append({"method": method, "budget": budget, "n_slices": n_slices,
                         "source_site": unit.get("source_site"),
                         "target_site": unit.get("target_site", unit.get("site")),
                         "fold": unit.get("fold"), "seed": seed,
                         "replicate": unit.get("replicate", 0),
                         "subject": data.scans[scan_id]["subject"], "split": split, **s})

    oracle_rows: dict[str, dict] = {}
    for unit in units:
        path = cache / f"{unit_key(unit)}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        kind = unit["kind"]
        if kind == "oracle":
            oracle_rows[unit_key(unit)] = {"unit": unit, "result": result}
        elif kind == "ceiling":
            add(unit, "ceiling", None, None, result["scores"], "test", None)
        elif kind == "none":
            add(unit, "none", None, None, result["scores"], "test", unit["seed"])
            add(unit, "none", None, None, result["validation"], "validation", unit["seed"])
        elif kind == "adapt":
            for split, key in (("test", "scores"), ("validation", "validation")):
                add(unit, unit["method"], unit["budget"], result["n_slices"], result[key],
                    split, unit["seed"])
            policy = result.get("policy") or {}
            runs.append({k: unit[k] for k in ("method", "budget", "source_site", "target_site",
                                              "fold", "seed")}
                        | {"replicate": unit.get("replicate", 0),
                           "test_sdice": _mean_sdice(result["scores"]),
                           "validation_sdice": _mean_sdice(result["validation"]),
                           "n_slices": result["n_slices"], "seconds": result["adapt_seconds"],
                           "loss_curve": result["loss_curve"],
                           "gate_names": policy.get("gate_names"),
                           "probability": policy.get("probability"),
                           "frequency": policy.get("frequency")})
    # the oracle is per target site and fold: every pair with that target shares it
    pairs = {(u["source_site"], u["target_site"]) for u in units if u["kind"] == "none"}
    for entry in oracle_rows.values():
        unit = entry["unit"]
        for source, target in sorted(pairs):
            if target == unit["site"]:
                add(unit | {"source_site": source, "target_site": target}, "oracle", None, None,
                    entry["result"]["scores"], "test", unit["seed"])
    for row in rows:  # the ceiling belongs to every pair with that target
        if row["method"] == "ceiling":
            row["source_site"] = "*"
    ceiling_rows = [r for r in rows if r["method"] == "ceiling"]
    rows = [r for r in rows if r["method"] != "ceiling"]
    for source, target in sorted(pairs):
        rows += [r | {"source_site": source} for r in ceiling_rows if r["target_site"] == target]
    return rows, runs


def _mean_sdice(scores: dict[str, dict[str, float]]) -> float | None:
    values = [s["sdice"] for s in scores.values() if "sdice" in s]
    return sum(values) / len(values) if values else None


def _lambda_reg(value: str) -> float | str:
    return value if value == "paper" else float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--data", type=Path, default=Path("data/bench"),
                        help="the output directory of `spottune data prepare`")
    parser.add_argument("--pairs", help="source:target,... [profile's]")
    parser.add_argument("--budgets", help="comma-separated, e.g. 5,12,volume [profile's]")
    parser.add_argument("--methods", help="comma-separated adaptation methods [profile's]")
    parser.add_argument("--seeds-per-fold", type=int, help="[profile's]")
    parser.add_argument("--adapt-iterations", type=int, help="[profile's]")
    parser.add_argument("--adapt-learning-rate", type=float, help="[profile's; none: derived]")
    parser.add_argument("--policy-learning-rate", type=float, help="[profile's; none: derived]")
    parser.add_argument("--frozen-norm", choices=("source", "target"), help="[profile's]")
    parser.add_argument("--lambda-reg", type=_lambda_reg,
                        help="SpotTUnet's penalty on trainable-twin choices, or 'paper': the "
                        "paper's value for the budget [profile's]")
    parser.add_argument("--temperature", type=float,
                        help="SpotTUnet's Gumbel-softmax temperature [profile's]")
    parser.add_argument("--policy-start", choices=("random", "neutral"),
                        help="spottune: the instance agent's initial head [profile's]")
    parser.add_argument("--gate-draws", choices=("batch", "slice"),
                        help="spottune-global: gate configurations per step [profile's]")
    parser.add_argument("--global-bn-reestimate", action=argparse.BooleanOptionalAction,
                        default=None, help="spottune-global: re-estimate the chosen units' "
                        "BatchNorm statistics on the target images after fine-tuning [profile's]")
    parser.add_argument("--global-search-share", type=float,
                        help="spottune-global: share of the iterations spent searching the "
                        "configuration; the rest fine-tunes the exported one [profile's]")
    parser.add_argument("--replicates", type=int,
                        help="SpotTUnet adaptations per split, as the service's option: replicate "
                        "r trains with adaptation seed seed + r on the same source model and "
                        "data; the main table uses replicate 0 only [profile's]")
    parser.add_argument("--name", help="results name [adaptation-<profile>]")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new unit after this long; what finished stays cached")
    parser.add_argument("--fold-order", help="e.g. 1,2,0: run these folds' adaptations first "
                        "(all pairs of a fold before the next fold) [plan order: pair by pair]")
    parser.add_argument("--table-only", action="store_true", help="run nothing, table the cache")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... [auto]")
    parser.add_argument("--jobs", type=int, default=1, help="processes (CPU: one per core)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    _setup(args.threads)
    profile = PROFILES[args.profile]
    overrides: dict[str, Any] = {}
    if args.pairs:
        overrides["pairs"] = tuple(tuple(p.split(":")) for p in args.pairs.split(","))
    if args.budgets:
        overrides["budgets"] = tuple(parse_budget(b) for b in args.budgets.split(","))
    if args.methods:
        overrides["methods"] = tuple(args.methods.split(","))
    if args.lambda_reg is not None:
        overrides["lambda_reg"] = None if args.lambda_reg == "paper" else args.lambda_reg
    for field in ("seeds_per_fold", "adapt_iterations", "adapt_learning_rate",
                  "policy_learning_rate", "frozen_norm", "global_bn_reestimate",
                  "temperature", "replicates", "gate_draws", "policy_start",
                  "global_search_share"):
        if getattr(args, field) is not None:
            overrides[field] = getattr(args, field)
    profile = dataclasses.replace(profile, **overrides)
    data = Data(args.data)
    missing = {site for pair in profile.pairs for site in pair} - set(data.manifest["sites"])
    if missing:
        parser.error(f"sites {sorted(missing)} are not in {args.data}/manifest.json")
    name = args.name or f"adaptation-{args.profile}"
    cache = args.out / "cache" / args.profile
    device = str(pick_device(args.device))
    units = plan(data, profile, data.manifest.get("seed"))
    start = time.time()
    if not args.table_only:
        deadline = start + (args.max_minutes * 60 if args.max_minutes else float("inf"))
        todo = [u for u in units if not (cache / f"{unit_key(u)}.json").is_file()]
        log.info("profile %s on %s: %d units, %d cached, %d to run, %d process(es)",
                 args.profile, device, len(units), len(units) - len(todo), len(todo), args.jobs)
        models = [u for u in todo if u["kind"] in ("source", "oracle", "ceiling")]
        evals = [u for u in todo if u not in models]
        # Cached source models whose weights this checkout lacks (they are not committed) and
        # which a pending adaptation needs: retrained once each, up front, one per process,
        # rather than by whichever adaptation first needs them (two processes could both train
        # the same one).
        needed = {e["source_key"]: e["source_unit"] for e in evals}  # evals: none and adapt
        trained = {unit_key(m) for m in models}
        restore = [u for k, u in needed.items()
                   if k not in trained and not model_weights(cache, u).is_file()]
        if args.fold_order:  # which folds finish first when a sitting ends before the profile
            rank = [int(f) for f in args.fold_order.split(",")]
            evals.sort(key=lambda u: rank.index(u["fold"]) if u["fold"] in rank else len(rank))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max(1, args.jobs), mp_context=context, initializer=_init,
                                 initargs=(args.data, cache, profile, device,
                                           args.threads)) as pool:
            if restore:
                log.info("retraining %d cached source model(s) whose weights are missing",
                         len(restore))
                list(pool.map(_run, restore, [deadline] * len(restore), [True] * len(restore)))
            for phase in (models, evals):  # adaptations need their source models
                done = 0
                for result in pool.map(_run, phase, [deadline] * len(phase)):
                    done += result is not None
                log.info("phase: %d of %d units done (%.1f min)", done, len(phase),
                         (time.time() - start) / 60)
    report = write_results(units, cache, data, profile, name, args, device, time.time() - start)
    print(report)
    return 0


def write_results(units: list[dict[str, Any]], cache: Path, data: Data, profile: Profile,
                  name: str, args: argparse.Namespace, device: str, elapsed: float) -> str:
    rows, runs = collect(units, cache, data)
    # the tables and the report's rows: replicate 0 only (every method then has one run per
    # split, as without replicates); the extra replicates' rows are kept apart, their runs (with
    # mean sDice) are in `runs`
    replicate_rows = [r for r in rows if r["replicate"] != 0]
    rows = [r for r in rows if r["replicate"] == 0]
    complete = all((cache / f"{unit_key(u)}.json").is_file() for u in units)
    stats = summarise(rows, profile.budgets, profile.methods)
    gated = [m for m in profile.methods if m.startswith("spottune")]
    agreement = {m: policy_agreement(runs, m) for m in gated}
    seconds = sum(json.loads((cache / f"{unit_key(u)}.json").read_text()).get("seconds", 0.0)
                  for u in units if (cache / f"{unit_key(u)}.json").is_file())
    report = {
        "profile": args.profile, "protocol": "v2", "settings": dataclasses.asdict(profile),
        "machine": machine_info(torch.device(device)), "device": device, "data": str(args.data),
        "data_seed": data.manifest.get("seed"), "complete": complete,
        "units": len(units), "compute_minutes": round(seconds / 60, 1),
        "elapsed_s_this_sitting": round(elapsed, 1),
        "rows": rows, "replicate_rows": replicate_rows, **stats,
        "policy_agreement": agreement.get("spottune", policy_agreement([], "spottune")),
        "policy_agreement_by_method": agreement,
        "policy_signature_by_method": {m: policy_signature(runs, m) for m in gated},
        "policy_variance_by_method": {m: {"probability": policy_variance(runs, m),
                                          "pattern": policy_variance(runs, m, pattern=True)}
                                      for m in gated},
        "plateau": plateau(runs),
        "replicate_spread": replicate_spread(runs), "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    state = "" if complete else ", INCOMPLETE"
    done = sum((cache / f"{unit_key(u)}.json").is_file() for u in units)
    title = (f"Adaptation benchmark v2, profile {args.profile} ({device}, {done}/{len(units)} "
             f"units, {seconds / 60:.0f} compute-min{state})")
    table = markdown_report(report, profile.budgets, title)
    (args.out / f"{name}.md").write_text(table)
    return table


if __name__ == "__main__":
    raise SystemExit(main())

"""Choosing SpotTUnet's settings on the validation scans: one table from several result files.

Each result file is one configuration of `bench/adaptation.py` (for example the profile's default
and runs with `--policy-learning-rate 0.05 --name sweep-policy-lr-0.05`). For every configuration,
method and budget this prints the mean surface Dice on the *validation* scans (the settings are
chosen there) with a 95% hierarchical-bootstrap interval, its paired difference from a baseline
configuration on the same validation scans (`--baseline`: per method, the first given that ran
it; `--versus CONFIG=BASELINE` for one configuration), the test-scan mean beside it (reported,
never used to choose), how decided the policy ended (mean |2p - 1| of the per-gate
probabilities: 0 = every gate a coin flip, 1 = every gate certain) and the policy agreement
across seeds and across sites. Writes bench/results/<name>.json and .md.

    python bench/adaptation_choices.py --name choices-policy-lr-cpu --baseline default \
        default=bench/results/adaptation-cpu-200.json \
        plr-0.05=bench/results/sweep-policy-lr-0.05.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from adaptation_stats import bootstrap, cells, paired_difference, point, policy_agreement

RESULTS = Path(__file__).resolve().parent / "results"


def decidedness(runs: list[dict], method: str, budget: Any) -> float | None:
    values = [np.abs(2 * np.asarray(r["probability"]) - 1).mean() for r in runs
              if r["method"] == method and r["budget"] == budget and r.get("probability")]
    return float(np.mean(values)) if values else None


def compare(configs: dict[str, dict[str, Any]], methods: Sequence[str],
            baselines: Sequence[str] = (), versus: dict[str, str] | None = None,
            ) -> list[dict[str, Any]]:
    """`versus`: configuration -> its own baseline, ahead of `baselines`."""
    rng = np.random.default_rng(0)
    table = []

    def baseline(label: str, method: str, budget: Any) -> tuple[str, Any] | None:
        own = (versus or {}).get(label)
        for candidate in ([own] if own else []) + list(baselines):
            cell = cells(configs[candidate]["rows"], method, budget, "validation")
            if cell:
                return candidate, cell
        return None

    for label, report in configs.items():
        rows, runs = report["rows"], report["runs"]
        budgets = report["settings"]["budgets"]
        for method in methods:
            for budget in budgets:
                cell = cells(rows, method, budget, "validation")
                mean = point(cell)
                if mean is None:
                    continue
                dist = bootstrap(cell, rng)
                same = [r for r in runs if r["budget"] == budget]
                agreement = policy_agreement(same, method)
                base = baseline(label, method, budget)
                against = (None if base is None or base[0] == label
                           else {"baseline": base[0], **(paired_difference(cell, base[1], rng)
                                                           or {})})
                table.append({
                    "config": label, "method": method, "budget": budget,
                    "validation_sdice": mean,
                    "validation_ci": [float(np.percentile(dist, 2.5)),
                                      float(np.percentile(dist, 97.5))],
                    "test_sdice": point(cells(rows, method, budget, "test")),
                    "n_validation": sum(len(s) for s in cell.values()),
                    "decidedness": decidedness(runs, method, budget),
                    "agreement_same_site": agreement["same_site_across_seeds"],
                    "agreement_across_sites": agreement["across_sites"],
                    "versus_baseline": against,
                })
    return table


def markdown(table: list[dict[str, Any]], title: str) -> str:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = [f"# {title}", "",
             "Validation mean sDice (1 mm) [95% interval]; test mean beside it, not used to "
             "choose. Decided: mean |2p - 1| of the gate probabilities. Agreement: Spearman of "
             "per-gate probabilities, same site across seeds / across sites. Versus baseline: "
             "paired difference on the same validation scans [95% interval].", "",
             "| method | budget | config | validation sDice | versus baseline | test sDice | "
             "decided | agreement same / across |", "|---|---|---|---|---|---|---|---|"]
    best: dict[tuple[str, Any], float] = {}
    for r in table:
        key = (r["method"], r["budget"])
        best[key] = max(best.get(key, -1.0), r["validation_sdice"])
    for r in sorted(table, key=lambda r: (r["method"], str(r["budget"]), r["config"])):
        mark = "**" if r["validation_sdice"] == best[(r["method"], r["budget"])] else ""
        low, high = r["validation_ci"]
        versus = r.get("versus_baseline")
        vs = ("(baseline)" if versus is None else
              f"{versus['difference']:+.3f} [{versus['ci_low']:+.3f}, {versus['ci_high']:+.3f}]"
              f" vs {versus['baseline']}" if "difference" in versus else "-")
        lines.append(
            f"| {r['method']} | {r['budget']} | {r['config']} | {mark}{f(r['validation_sdice'])}"
            f"{mark} [{f(low)}, {f(high)}] | {vs} | {f(r['test_sdice'])} | "
            f"{f(r['decidedness'])} | "
            f"{f(r['agreement_same_site'])} / {f(r['agreement_across_sites'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", help="LABEL=results.json")
    parser.add_argument("--methods", default="spottune,spottune-global")
    parser.add_argument("--name", default="choices-cpu")
    parser.add_argument("--baseline", action="append", default=[],
                        help="LABEL of the configuration others are compared with, paired (may "
                        "repeat: per method, the first that ran it)")
    parser.add_argument("--versus", action="append", default=[],
                        help="CONFIG=BASELINE: compare CONFIG with BASELINE instead (may repeat)")
    parser.add_argument("--budgets", help="comma-separated budgets to table, e.g. 5,12 (a "
                        "configuration still running covers only some) [all]")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    configs = {}
    for item in args.configs:
        label, _, path = item.partition("=")
        if not path:
            parser.error(f"expected LABEL=PATH, got {item!r}")
        configs[label] = json.loads(Path(path).read_text())
    versus = dict(item.partition("=")[::2] for item in args.versus)
    unknown = {*args.baseline, *versus, *versus.values()} - set(configs)
    if unknown:
        parser.error(f"{sorted(unknown)} are not among the configurations")
    table = compare(configs, args.methods.split(","), args.baseline, versus)
    if args.budgets:
        budgets = args.budgets.split(",")
        table = [row for row in table if str(row["budget"]) in budgets]
    sources = {label: {"file": item.partition("=")[2], "complete": configs[label]["complete"],
                       "settings": configs[label]["settings"]}
               for label, item in zip(configs, args.configs, strict=True)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(
        json.dumps({"configs": sources, "table": table}, indent=1) + "\n")
    text = markdown(table, f"SpotTUnet settings on the validation scans ({args.name})")
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

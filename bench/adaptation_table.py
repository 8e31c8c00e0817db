"""Markdown summary of adaptation benchmark rows: mean sDice per method and budget, gap closed,
and a paired Wilcoxon test of SpotTUnet against the best fixed fine-tuning strategy per budget."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy.stats import wilcoxon

BUDGET_FREE = ("none", "oracle")  # evaluated once per pair and seed, the same for every budget
FIXED = ("finetune-all", "finetune-first", "finetune-last")
ORDER = ("none", *FIXED, "spottune", "spottune-global", "spottune-adabn", "oracle")


def _key(row: dict) -> tuple:
    return (row["source_site"], row["target_site"], row["seed"], row["subject"])


def _select(rows: Sequence[dict], method: str, budget: str) -> list[dict]:
    return [
        r
        for r in rows
        if r["method"] == method and (method in BUDGET_FREE or r["budget"] == budget)
    ]


def pair_mean(
    rows: Sequence[dict], method: str, budget: str, metric: str = "sdice"
) -> float | None:
    """Mean of `metric` per source->target pair (over seeds and test subjects), then over pairs."""
    per_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in _select(rows, method, budget):
        per_pair[(row["source_site"], row["target_site"])].append(row[metric])
    if not per_pair:
        return None
    return float(np.mean([np.mean(values) for values in per_pair.values()]))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _wilcoxon(rows: Sequence[dict], budget: str, best: str) -> str:
    ours = {_key(r): r["sdice"] for r in _select(rows, "spottune", budget)}
    theirs = {_key(r): r["sdice"] for r in _select(rows, best, budget)}
    shared = sorted(set(ours) & set(theirs))
    differences = np.array([ours[k] - theirs[k] for k in shared])
    if len(shared) < 2 or not np.any(differences):
        return f"n={len(shared)}, not testable"
    p_value = float(wilcoxon(differences).pvalue)
    return f"n={len(shared)}, mean diff {differences.mean():+.3f}, p={p_value:.3g}"


def markdown_report(rows: Sequence[dict], budgets: Sequence[str], title: str) -> str:
    """The benchmark's markdown table (see module docstring)."""
    methods = [m for m in ORDER if any(r["method"] == m for r in rows)]
    lines = [
        f"# {title}",
        "",
        "Mean surface Dice (1 mm), averaged per source->target pair, then over "
        "pairs; in brackets the gap closed = (method - none) / (oracle - none).",
        "",
    ]
    header = "| method | " + " | ".join(
        f"{b} slices" if b != "volume" else "1 volume" for b in budgets
    )
    lines += [header + " |", "|---" * (len(budgets) + 1) + "|"]
    for method in methods:
        cells = []
        for budget in budgets:
            value = pair_mean(rows, method, budget)
            none, oracle = pair_mean(rows, "none", budget), pair_mean(rows, "oracle", budget)
            gap = None
            if None not in (value, none, oracle) and method not in BUDGET_FREE and oracle != none:
                gap = (value - none) / (oracle - none)  # type: ignore[operator]
            cells.append(_fmt(value) + (f" ({_fmt(gap, 2)})" if gap is not None else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean Dice, same averaging:",
        "",
        header + " |",
        "|---" * (len(budgets) + 1) + "|",
    ]
    for method in methods:
        lines.append(
            f"| {method} | "
            + " | ".join(_fmt(pair_mean(rows, method, b, "dice")) for b in budgets)
            + " |"
        )
    lines += [
        "",
        "SpotTUnet (instance) vs the best fixed strategy per budget, paired Wilcoxon over "
        "(pair, seed, test subject):",
        "",
    ]
    for budget in budgets:
        scored = [(pair_mean(rows, m, budget), m) for m in FIXED]
        scored = [(v, m) for v, m in scored if v is not None]
        if not scored or pair_mean(rows, "spottune", budget) is None:
            continue
        best = max(scored)[1]
        lines.append(f"- {budget}: best fixed = {best}; {_wilcoxon(rows, budget, best)}")
    pairs = sorted({(r["source_site"], r["target_site"]) for r in rows})
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    lines += ["", f"Pairs: {', '.join(f'{s}->{t}' for s, t in pairs)}; seeds: {seeds}.", ""]
    return "\n".join(lines)

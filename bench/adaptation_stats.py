"""Statistics of the adaptation benchmark: intervals, the best fixed strategy, policy agreement.

- Values are averaged over seeds per (pair, test subject) first; a 95% interval comes from a
  hierarchical bootstrap that resamples pairs, then test subjects within each resampled pair.
- The best fixed strategy per budget is chosen on the validation scans, then compared on test.
- SpotTUnet vs that strategy: the paired difference per (pair, subject), bootstrapped the same way;
  two-sided bootstrap p-values, Holm-corrected across budgets.
- Policy agreement: Spearman correlation of per-gate fine-tune probabilities between runs of the
  same pair and budget with different seeds, and between runs of different target sites with the
  same seed and budget (replicate 0 only), and between replicates of one split (same pair, fold,
  seed and budget: only the adaptation seed differs).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from adaptation_profiles import FIXED_METHODS

from spottune.ml.replicates import rank_agreement

N_BOOTSTRAP = 4000
Cell = dict[tuple[str, str], dict[str, float]]  # (source, target) -> subject -> value


def cells(rows: Sequence[dict], method: str, budget: Any, split: str = "test",
          metric: str = "sdice") -> Cell:
    """Seed-averaged values per (pair, subject). Budget-free methods ignore `budget`."""
    values: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["method"] != method or r["split"] != split:
            continue
        if r["budget"] is not None and r["budget"] != budget:
            continue
        values[(r["source_site"], r["target_site"])][r["subject"]].append(r[metric])
    return {pair: {s: float(np.mean(v)) for s, v in subjects.items()}
            for pair, subjects in values.items()}


def point(cell: Cell) -> float | None:
    """Mean over subjects per pair, then over pairs (the paper's averaging)."""
    if not cell:
        return None
    return float(np.mean([np.mean(list(s.values())) for s in cell.values()]))


def median(cell: Cell) -> float | None:
    """Median over all (pair, subject) values: HD95 is inf where a prediction is empty."""
    values = [v for s in cell.values() for v in s.values()]
    return float(np.median(values)) if values else None


def bootstrap(cell: Cell, rng: np.random.Generator, n: int = N_BOOTSTRAP) -> np.ndarray:
    """Bootstrap distribution of point(cell): pairs resampled, then subjects within pairs."""
    pairs = [np.array(list(s.values())) for s in cell.values()]
    out = np.empty(n)
    for b in range(n):
        chosen = rng.integers(0, len(pairs), len(pairs))
        out[b] = np.mean([pairs[i][rng.integers(0, pairs[i].size, pairs[i].size)].mean()
                          for i in chosen])
    return out


def difference(a: Cell, b: Cell) -> Cell:
    """Paired a - b per (pair, subject) present in both."""
    return {pair: {s: a[pair][s] - b[pair][s] for s in a[pair] if s in b.get(pair, {})}
            for pair in a if pair in b}


def paired_difference(a: Cell, b: Cell, rng: np.random.Generator) -> dict[str, float] | None:
    """a - b paired per (pair, subject): mean, 95% bootstrap interval and two-sided p, or None
    when no subject has both."""
    diff = difference(a, b)
    if not any(diff.values()):
        return None
    dist = bootstrap(diff, rng)
    mean = point(diff)
    assert mean is not None
    return {"difference": mean, "ci_low": float(np.percentile(dist, 2.5)),
            "ci_high": float(np.percentile(dist, 97.5)),
            "p": float(min(1.0, 2 * min((dist <= 0).mean(), (dist >= 0).mean())))}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def summarise(rows: Sequence[dict], budgets: Sequence[Any], methods: Sequence[str],
              seed: int = 0) -> dict[str, Any]:
    """summary, best_fixed, comparisons (SpotTUnet vs the best fixed strategy) and ceilings."""
    rng = np.random.default_rng(seed)
    none, oracle = point(cells(rows, "none", None)), point(cells(rows, "oracle", None))
    summary = []
    for budget in budgets:
        for method in ("none", *methods, "oracle"):
            cell = cells(rows, method, budget)
            mean = point(cell)
            if mean is None:
                continue
            dist = bootstrap(cell, rng)
            gap = None
            if none is not None and oracle is not None and oracle != none:
                gap = (mean - none) / (oracle - none)
            summary.append({
                "method": method, "budget": budget, "mean_sdice": mean,
                "ci_low": float(np.percentile(dist, 2.5)),
                "ci_high": float(np.percentile(dist, 97.5)),
                "gap_closed": gap,
                "mean_sdice_2mm": point(cells(rows, method, budget, metric="sdice_2mm")),
                "mean_dice": point(cells(rows, method, budget, metric="dice")),
                "median_hd95": median(cells(rows, method, budget, metric="hd95")),
                "n_pairs": len(cell), "n_subjects": sum(len(s) for s in cell.values()),
            })
    best_fixed: dict[str, str] = {}
    for budget in budgets:
        scored = [(point(cells(rows, m, budget, "validation")), m)
                  for m in FIXED_METHODS if m in methods]
        scored = [(v, m) for v, m in scored if v is not None]
        if scored:
            best_fixed[str(budget)] = max(scored)[1]
    comparisons = []
    for method in (m for m in methods if m.startswith("spottune")):
        found = []
        for budget in budgets:
            best = best_fixed.get(str(budget))
            if best is None:
                continue
            paired = paired_difference(cells(rows, method, budget), cells(rows, best, budget),
                                       rng)
            if paired is None:
                continue
            found.append({"method": method, "budget": budget, "best_fixed": best, **paired})
        for item, adjusted in zip(found, holm([f["p"] for f in found]), strict=True):
            item["p_holm"] = adjusted
        comparisons += found
    global_vs_instance = []  # the goal: the global policy within 0.02 of the instance one
    if "spottune" in methods and "spottune-global" in methods:
        for budget in budgets:
            paired = paired_difference(cells(rows, "spottune-global", budget),
                                       cells(rows, "spottune", budget), rng)
            if paired is not None:
                paired.pop("p")
                global_vs_instance.append({"budget": budget, **paired})
    ceiling = cells(rows, "ceiling", None)
    return {"summary": summary, "best_fixed": best_fixed, "comparisons": comparisons,
            "global_vs_instance": global_vs_instance,
            "ceiling": {"mean_sdice": point(ceiling),
                        "mean_sdice_2mm": point(cells(rows, "ceiling", None, metric="sdice_2mm")),
                        "mean_dice": point(cells(rows, "ceiling", None, metric="dice"))}}


def policy_agreement(runs: Sequence[dict], method: str = "spottune") -> dict[str, Any]:
    """Mean Spearman correlation of per-gate probabilities: same pair and budget across seeds,
    and same seed and budget across target sites (both among replicate-0 runs, so they mean what
    they meant before replicates); and same pair, fold, seed and budget across replicates (only
    the adaptation seed differs: the service's `replicates` confidence). The `frequency_*` fields
    are the same over the per-gate fine-tune frequencies (None where no run has them). The
    same-site pairs are also split by fold (`same_site_same_fold`: the same training subject,
    slices and held-out head, another seed of source model, oracle and adaptation - what
    `--seeds-per-fold` adds; `same_site_other_fold`: another head held out and trained on)."""
    chosen = [r for r in runs if r["method"] == method and r.get("probability")]
    # (comparison, readout) -> one Spearman correlation per pair of runs
    found: dict[tuple[str, str], list[float]] = {
        (comparison, readout): []
        for comparison in ("same", "same_fold", "other_fold", "across", "replicates")
        for readout in ("probability", "frequency")}
    for a, b in itertools.combinations(chosen, 2):
        if a["budget"] != b["budget"]:
            continue
        same_pair = (a["source_site"], a["target_site"]) == (b["source_site"], b["target_site"])
        ra, rb = a.get("replicate", 0), b.get("replicate", 0)
        if ra == rb == 0:
            if same_pair and a["seed"] != b["seed"]:
                comparison = "same"
            elif not same_pair and a["seed"] == b["seed"]:
                comparison = "across"
            else:
                continue
        elif (same_pair and ra != rb and a.get("fold") == b.get("fold")
              and a["seed"] == b["seed"]):
            comparison = "replicates"
        else:
            continue
        for readout in ("probability", "frequency"):
            if a.get(readout) and b.get(readout):
                rho = rank_agreement(a[readout], b[readout])
                if rho is not None:
                    found[comparison, readout].append(rho)
                    if comparison == "same":
                        fold = "same_fold" if a.get("fold") == b.get("fold") else "other_fold"
                        found[fold, readout].append(rho)

    def mean(comparison: str, readout: str) -> float | None:
        values = found[comparison, readout]
        return float(np.mean(values)) if values else None

    def n(comparison: str, readout: str) -> int:
        return len(found[comparison, readout])

    return {"same_site_across_seeds": mean("same", "probability"),
            "across_sites": mean("across", "probability"),
            "n_same_site": n("same", "probability"), "n_across_sites": n("across", "probability"),
            "same_site_same_fold": mean("same_fold", "probability"),
            "n_same_site_same_fold": n("same_fold", "probability"),
            "same_site_other_fold": mean("other_fold", "probability"),
            "n_same_site_other_fold": n("other_fold", "probability"),
            "same_source_across_replicates": mean("replicates", "probability"),
            "n_same_source": n("replicates", "probability"),
            "frequency_same_site_across_seeds": mean("same", "frequency"),
            "frequency_across_sites": mean("across", "frequency"),
            "frequency_same_source_across_replicates": mean("replicates", "frequency"),
            "n_frequency_same_site": n("same", "frequency"),
            "n_frequency_across_sites": n("across", "frequency"),
            "n_frequency_same_source": n("replicates", "frequency")}


SIGNATURE_COUNTS = {"same_pair_across_folds": "n_same_pair",
                    "other_pairs_across_folds": "n_other_pairs",
                    "other_pairs_same_fold": "n_other_pairs_same_fold"}
"""policy_signature's comparisons: mean correlation field -> its count field."""


def first_replicates(runs: Sequence[dict], method: str) -> list[dict]:
    """The method's replicate-0 runs that have a policy readout (what runs without replicates
    were, so figures over them mean what they meant before replicates)."""
    return [r for r in runs
            if r["method"] == method and r.get("probability") and r.get("replicate", 0) == 0]


def policy_signature(runs: Sequence[dict], method: str = "spottune") -> dict[str, Any]:
    """Whether a scanner's signature shows once a fold's runs are averaged: per (pair, fold), the
    mean per-gate probability over its budgets (replicate 0), then the mean Spearman correlation
    of those means for the same pair across folds (other source model, test head, training
    subject), for other pairs across folds, and for other pairs within a fold (the same source
    model and training head). A scanner's signature shows as same-pair agreement clearly above
    both; the source model's, as other pairs within a fold above other pairs across folds."""
    groups: dict[tuple[str, str, Any], list[list[float]]] = defaultdict(list)
    for r in first_replicates(runs, method):
        groups[(r["source_site"], r["target_site"], r.get("fold"))].append(r["probability"])
    means = {key: np.mean(values, axis=0).tolist() for key, values in groups.items()}
    found: dict[str, list[float]] = {name: [] for name in SIGNATURE_COUNTS}
    for a, b in itertools.combinations(sorted(means, key=str), 2):
        if a[:2] == b[:2]:
            comparison = "same_pair_across_folds"
        elif a[2] != b[2]:
            comparison = "other_pairs_across_folds"
        else:
            comparison = "other_pairs_same_fold"
        rho = rank_agreement(means[a], means[b])
        if rho is not None:
            found[comparison].append(rho)
    out: dict[str, Any] = {"runs_per_mean": (float(np.mean([len(v) for v in groups.values()]))
                                             if groups else None)}
    for name, values in found.items():
        out[name] = float(np.mean(values)) if values else None
        out[SIGNATURE_COUNTS[name]] = len(values)
    return out


def replicate_spread(runs: Sequence[dict]) -> list[dict[str, Any]]:
    """Per method and budget with replicates: mean test sDice per replicate (over the splits
    that have it) and the mean within-split range (max - min) of test sDice across replicates."""
    by_split: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in runs:
        if r.get("test_sdice") is not None:
            split = (r["method"], r["budget"], r["source_site"], r["target_site"], r["fold"],
                     r["seed"])
            by_split[split][r.get("replicate", 0)] = r["test_sdice"]
    groups: dict[tuple[str, Any], list[dict[int, float]]] = defaultdict(list)
    for (method, budget, *_), values in by_split.items():
        groups[(method, budget)].append(values)
    out = []
    for (method, budget), splits in groups.items():
        if not any(len(s) > 1 for s in splits):
            continue
        per: dict[int, list[float]] = defaultdict(list)
        for s in splits:
            for replicate, value in s.items():
                per[replicate].append(value)
        ranges = [max(s.values()) - min(s.values()) for s in splits if len(s) > 1]
        out.append({"method": method, "budget": budget,
                    "test_sdice_by_replicate": {str(k): float(np.mean(v))
                                                for k, v in sorted(per.items())},
                    "mean_range": float(np.mean(ranges)), "splits": len(ranges)})
    return out


def plateau(runs: Sequence[dict]) -> list[dict[str, Any]]:
    """Per method and budget: the training loss's relative drop over the last quarter of the
    schedule (mean of the runs' curves, every replicate's included). Near zero: the method has
    stopped improving on its training slices by the end of the schedule."""
    groups: dict[tuple[str, Any], list[float]] = defaultdict(list)
    for r in runs:
        curve = r.get("loss_curve") or []
        if len(curve) >= 4:
            quarter = max(1, len(curve) // 4)
            before, last = np.mean(curve[-2 * quarter:-quarter]), np.mean(curve[-quarter:])
            groups[(r["method"], r["budget"])].append(float((before - last) / max(before, 1e-8)))
    return [{"method": m, "budget": b, "loss_drop_last_quarter": float(np.mean(v)),
             "runs": len(v)} for (m, b), v in groups.items()]



def policy_variance(runs: Sequence[dict], method: str = "spottune", pattern: bool = False,
                    permutations: int = 2000, seed: int = 0) -> dict[str, Any]:
    """What the per-gate probabilities answer to, with the source model held apart: a two-way
    decomposition (no replication) of their variance into the pair's target site, the source
    model (fold and seed: one source model, training head and held-out head) and the rest (site x
    source interaction and the adaptation's own noise). Per budget over the source models that
    have a replicate-0 run for every pair; sums of squares pooled over gates and budgets.

    `site_chance` is the site's mean share when each source model's runs are shuffled across the
    pairs (one shuffle per source model, the same at every budget, since a source model's runs
    for one pair share its training subject); `p_site` is the share of shuffles at or above the
    observed share. A policy that is a fingerprint of the scanner has a site share well above its
    chance level. With `pattern`, each run's probabilities are first centred on their own mean
    over gates: what is left is where the run fine-tunes, not how much."""
    by_budget: dict[Any, dict[tuple[Any, Any], dict[tuple[str, str], np.ndarray]]] = (
        defaultdict(lambda: defaultdict(dict)))
    for r in first_replicates(runs, method):
        values = np.asarray(r["probability"], dtype=float)
        source, pair = (r.get("fold"), r["seed"]), (r["source_site"], r["target_site"])
        by_budget[r["budget"]][source][pair] = values - values.mean() if pattern else values
    pairs = sorted({pair for sources in by_budget.values() for per in sources.values()
                    for pair in per})
    # budget -> (source models with every pair, their [source, pair, gate] probabilities)
    blocks: list[tuple[Any, list[tuple[Any, Any]], np.ndarray]] = []
    # budgets in the profile's order: slice counts ascending, then "volume"
    for budget in sorted(by_budget, key=lambda b: (isinstance(b, str), 0 if isinstance(b, str)
                                                   else b)):
        sources = by_budget[budget]
        complete = [key for key in sorted(sources, key=str) if len(sources[key]) == len(pairs)]
        if len(pairs) >= 2 and len(complete) >= 2:
            blocks.append((budget, complete,
                           np.array([[sources[k][p] for p in pairs] for k in complete])))
    out: dict[str, Any] = {"site": None, "source_model": None, "residual": None,
                           "site_chance": None, "p_site": None, "pairs": len(pairs),
                           "source_models": 0, "budgets": [str(b) for b, _, _ in blocks]}

    def squares(x: np.ndarray) -> tuple[float, float, float]:
        """(site, source model, total) sums of squares of one [source, pair, gate] block."""
        centred = x - x.mean(axis=(0, 1))
        site = x.shape[0] * float((centred.mean(axis=0) ** 2).sum())
        source = x.shape[1] * float((centred.mean(axis=1) ** 2).sum())
        return site, source, float((centred ** 2).sum())

    totals = [squares(x) for _, _, x in blocks]
    total = sum(t for _, _, t in totals)
    if not blocks or total <= 0:
        return out
    site, source = sum(s for s, _, _ in totals), sum(s for _, s, _ in totals)
    keys = sorted({key for _, complete, _ in blocks for key in complete}, key=str)
    rng = np.random.default_rng(seed)
    shuffled = np.empty(permutations)
    for i in range(permutations):
        order = {key: rng.permutation(len(pairs)) for key in keys}
        shuffled[i] = sum(squares(np.stack([x[row, order[key]] for row, key
                                            in enumerate(complete)]))[0]
                          for _, complete, x in blocks) / total
    share = site / total
    out.update(site=share, source_model=source / total, residual=(total - site - source) / total,
               site_chance=float(shuffled.mean()),
               p_site=float((1 + np.sum(shuffled >= share - 1e-12)) / (1 + permutations)),
               source_models=len(keys))
    return out

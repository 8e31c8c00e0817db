"""Markdown report of the adaptation benchmark: sDice with 95% intervals and gap closed per method
and budget, the validation-chosen best fixed strategy, SpotTUnet against it, policy agreement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ORDER = ("none", "finetune-all", "finetune-first", "finetune-last", "spottune",
         "spottune-global", "spottune-adabn", "oracle")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_report(report: dict[str, Any], budgets: Sequence[Any], title: str) -> str:
    summary = {(s["method"], s["budget"]): s for s in report["summary"]}
    best = report["best_fixed"]
    lines = [f"# {title}", "",
             "Mean surface Dice at 1 mm on the common 1 mm grid, [95% interval], (gap closed); "
             "**bold**: the best fixed strategy chosen on the validation scans.", "",
             "| method | " + " | ".join(f"{b} slices" if b != "volume" else "1 volume"
                                        for b in budgets) + " |",
             "|---" * (len(budgets) + 1) + "|"]
    for method in ORDER:
        cells = []
        for budget in budgets:
            s = summary.get((method, budget))
            if s is None:
                cells.append("-")
                continue
            text = f"{s['mean_sdice']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
            if method not in ("none", "oracle") and s["gap_closed"] is not None:
                text += f" ({s['gap_closed']:.2f})"
            if best.get(str(budget)) == method:
                text = f"**{text}**"
            cells.append(text)
        if any(c != "-" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Surface Dice at 2 mm / Dice / median HD95 (mm):", "",
              "| method | " + " | ".join(str(b) for b in budgets) + " |",
              "|---" * (len(budgets) + 1) + "|"]
    for method in ORDER:
        cells = []
        for budget in budgets:
            s = summary.get((method, budget))
            cells.append("-" if s is None else f"{_fmt(s['mean_sdice_2mm'])} / "
                         f"{_fmt(s['mean_dice'])} / {_fmt(s['median_hd95'], 1)}")
        if any(c != "-" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    c = report["ceiling"]
    lines += ["", f"Round-trip ceiling (reference mask through the model's grid and back): "
              f"sDice {_fmt(c['mean_sdice'])}, sDice 2 mm {_fmt(c['mean_sdice_2mm'])}, "
              f"Dice {_fmt(c['mean_dice'])}.", ""]
    if report["comparisons"]:
        lines += ["SpotTUnet minus the validation-chosen best fixed strategy (paired per test "
                  "subject, hierarchical bootstrap, Holm across budgets):", "",
                  "| method | budget | best fixed | difference [95% CI] | p (Holm) |",
                  "|---|---|---|---|---|"]
        for r in report["comparisons"]:
            lines.append(f"| {r['method']} | {r['budget']} | {r['best_fixed']} | "
                         f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | "
                         f"{r['p_holm']:.3f} |")
        lines.append("")
    if report.get("global_vs_instance"):
        lines += ["Global minus instance policy (paired per test subject, hierarchical bootstrap; "
                  "goal: within 0.02):", "", "| budget | difference [95% CI] |", "|---|---|"]
        for r in report["global_vs_instance"]:
            lines.append(f"| {r['budget']} | {r['difference']:+.3f} "
                         f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] |")
        lines.append("")
    for name, agreement in report["policy_agreement_by_method"].items():
        text = (f"Policy agreement ({name}, Spearman of per-gate probabilities): same site "
                f"across seeds {_fmt(agreement['same_site_across_seeds'], 2)} "
                f"(n = {agreement['n_same_site']}), across sites "
                f"{_fmt(agreement['across_sites'], 2)} (n = {agreement['n_across_sites']})")
        if agreement.get("n_same_site_same_fold"):
            text += (f"; same site, same fold (training subject and held-out head), other "
                     f"seeds {_fmt(agreement['same_site_same_fold'], 2)} "
                     f"(n = {agreement['n_same_site_same_fold']}), other folds "
                     f"{_fmt(agreement['same_site_other_fold'], 2)} "
                     f"(n = {agreement['n_same_site_other_fold']})")
        if agreement.get("n_same_source"):
            text += (f", same source across replicates (only the adaptation seed differs) "
                     f"{_fmt(agreement['same_source_across_replicates'], 2)} "
                     f"(n = {agreement['n_same_source']}; per-gate fine-tune frequencies "
                     f"{_fmt(agreement.get('frequency_same_source_across_replicates'), 2)}, "
                     f"n = {agreement.get('n_frequency_same_source', 0)})")
        lines.append(text + ".")
    for name, sig in report.get("policy_signature_by_method", {}).items():
        if sig.get("runs_per_mean"):
            lines.append(
                f"Policy signature ({name}: per-gate probabilities averaged over a fold's "
                f"{sig['runs_per_mean']:.0f} runs, then Spearman): same pair across folds "
                f"{_fmt(sig['same_pair_across_folds'], 2)} (n = {sig['n_same_pair']}), other "
                f"pairs across folds {_fmt(sig['other_pairs_across_folds'], 2)} "
                f"(n = {sig['n_other_pairs']}), other pairs in the same fold (same source model) "
                f"{_fmt(sig['other_pairs_same_fold'], 2)} (n = {sig['n_other_pairs_same_fold']}).")
    for name, parts in report.get("policy_variance_by_method", {}).items():
        whole, where = parts["probability"], parts["pattern"]
        if whole.get("site") is None:
            continue
        lines.append(
            f"Policy variance ({name}, per-gate probabilities over {whole['source_models']} "
            f"source models x {whole['pairs']} pairs, budgets {', '.join(whole['budgets'])}): "
            f"target site {_fmt(whole['site'], 2)} (chance {_fmt(whole['site_chance'], 2)}, "
            f"p = {whole['p_site']:.3f}), source model {_fmt(whole['source_model'], 2)}, rest "
            f"{_fmt(whole['residual'], 2)}; where it fine-tunes (each run centred on its own "
            f"mean): site {_fmt(where['site'], 2)} (chance {_fmt(where['site_chance'], 2)}, "
            f"p = {where['p_site']:.3f}), source model {_fmt(where['source_model'], 2)}, rest "
            f"{_fmt(where['residual'], 2)}.")
    for s in report.get("replicate_spread", []):
        by = ", ".join(f"{r}: {v:.3f}" for r, v in s["test_sdice_by_replicate"].items())
        lines.append(f"Replicates ({s['method']}, {s['budget']} slices): mean test sDice by "
                     f"replicate {by}; mean range within a split {s['mean_range']:.3f} "
                     f"(n = {s['splits']} splits).")
    drops = {(d["method"], d["budget"]): d["loss_drop_last_quarter"]
             for d in report.get("plateau", [])}
    if drops:
        lines += ["", "Learning curves: relative drop of the training loss over the last quarter "
                  "of the schedule (near 0: plateaued):", "",
                  "| method | " + " | ".join(str(b) for b in budgets) + " |",
                  "|---" * (len(budgets) + 1) + "|"]
        for method in ORDER:
            cells = [_fmt(drops.get((method, b)), 3) for b in budgets]
            if any(c != "-" for c in cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

"""Replicated adaptations: train several seeds, measure how far their policies agree, deliver one.

A SpotTUnet policy is only a fingerprint of the scanner if another seed finds the same one. With
`replicates` > 1 an adaptation is trained once per seed (options.seed, options.seed + 1, ...); the
agreement of their per-gate fine-tune probabilities (mean pairwise Spearman correlation) is the
report's confidence in the policy, and one replicate is delivered:
- the best mean surface Dice on the clinic's validation scans when there are any (annotated scans
  kept out of training), else
- the most typical policy (highest mean agreement with the others) for SpotTUnet, else
- the lowest training loss over the last tenth of the steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import spearmanr

from spottune.ml.loop import Progress, ProgressCallback
from spottune.ml.preparation import PreparedVolume
from spottune.ml.readout import PolicyRecord
from spottune.ml.train import AdaptOptions, AdaptResult, adapt

Scorer = Callable[[AdaptResult], float]
"""Scores a finished replicate on held-out data (higher is better), e.g. mean surface Dice."""


@dataclass
class Replicates:
    """results[i] was trained with seeds[i]; results[delivered] is the one to hand out."""

    results: list[AdaptResult]
    seeds: list[int]
    delivered: int
    reason: str
    agreement: float | None
    """Mean pairwise Spearman correlation of per-gate probabilities; None with one replicate or
    without a policy."""
    validation: list[float | None] = field(default_factory=list)

    @property
    def result(self) -> AdaptResult:
        return self.results[self.delivered]

    def summary(self) -> dict[str, object]:
        return {"seeds": self.seeds, "delivered_seed": self.seeds[self.delivered],
                "reason": self.reason, "agreement": self.agreement,
                "validation_sdice": self.validation}


CONSISTENT = 0.8  # agreement at or above: the replicates found the same ranking of gates
PARTLY = 0.5  # below: the ranking is mostly the seed's


def agreement_verdict(agreement: float | None, replicates: int) -> str:
    """What the replicates' policy agreement lets a clinic read from the policy, in words.

    Measured on the project's benchmark (bench/results/replicates-*.md): replicates that differ
    only in the adaptation seed agreed at Spearman 0.03 after 200 CPU iterations and 0.34 after
    800 (global policy: 0.25 and 0.77), and runs on other scanners agreed about as much, so a
    single run's policy is not taken as a fingerprint of the scanner, and a reproducible one is
    not taken as specific to the scanner.
    """
    if replicates < 2:
        return ("One replicate: whether another seed would choose the same gates was not "
                "measured (option replicates, 3 or more), so read the policy as one run's "
                "choice, not yet as where this scanner's shift lives.")
    if agreement is None:
        return "The replicates' policies are constant, so their agreement is undefined."
    if agreement >= CONSISTENT:
        return (f"Consistent: the replicates ranked the gates alike (agreement {agreement:.2f} "
                f">= {CONSISTENT}), so the ranking is reproducible for this model and data. "
                "Whether it is this scanner's own shows only beside other scanners' reports: on "
                "the project's benchmark, rankings reproduced by long schedules were often "
                "shared by other scanners.")
    if agreement >= PARTLY:
        return (f"Partly consistent (agreement {agreement:.2f}): the strongest gates recur "
                "across replicates, the order of the rest depends on the seed.")
    return (f"Not consistent (agreement {agreement:.2f}): another seed chose different gates, "
            "so the policy above is one draw, not a fingerprint of this scanner; a longer "
            "schedule (more iterations) makes replicates agree more.")


def scanner_evidence(policy: str) -> str:
    """What the project's benchmark says a policy of this kind ('instance' or 'global') shows of
    the scanner once the source model is held apart (bench/adaptation.py's
    policy_variance_by_method: share of the per-gate variance explained by the target site over 3
    source models x 4 sites, against its share when the sites are shuffled)."""
    if policy == "global":
        return ("On the project's benchmark the global policy's ranking follows the scanner: with "
                "the source model held apart, the target site explained about 0.4-0.5 of its "
                "per-gate variance after 400-800 CPU iterations (0.26-0.27 by chance), and more "
                "with longer schedules; the seeds still move it, so read it with replicates.")
    return ("On the project's benchmark the instance policy's per-gate ranking barely follows "
            "the scanner: with the source model held apart, the target site explained 0.28 of "
            "where it fine-tunes after 800 CPU iterations (0.25 by chance), though it did follow "
            "how much is fine-tuned. Read the stages it fine-tunes most as this run's choice; a "
            "global-policy adaptation ranks the stages more reproducibly.")


def rank_agreement(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman correlation of two per-gate probability vectors; None if either is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    rho = float(spearmanr(a, b).statistic)
    return rho if np.isfinite(rho) else None


def policy_agreement(records: Sequence[PolicyRecord]) -> tuple[float | None, list[float]]:
    """(mean pairwise agreement, each record's mean agreement with the others)."""
    n = len(records)
    per: list[list[float]] = [[] for _ in range(n)]
    pairs = []
    for i, j in itertools.combinations(range(n), 2):
        rho = rank_agreement(records[i].probability, records[j].probability)
        if rho is not None:
            pairs.append(rho)
            per[i].append(rho)
            per[j].append(rho)
    means = [float(np.mean(p)) if p else float("-inf") for p in per]
    return (float(np.mean(pairs)) if pairs else None), means


def _late_loss(result: AdaptResult) -> float:
    losses = [h["loss"] for h in result.history]
    if not losses:
        return float("inf")
    return float(np.mean(losses[-max(1, len(losses) // 10):]))


def adapt_replicates(
    base: object,
    config: object,
    train: Sequence[PreparedVolume],
    method: str,
    options: AdaptOptions,
    *,
    scorer: Scorer | None = None,
    progress: ProgressCallback | None = None,
    **kwargs: object,
) -> Replicates:
    """adapt() once per replicate seed (keyword arguments are passed on); see the module doc."""
    n = options.replicates
    seeds = [options.seed + i for i in range(n)]
    results = []
    for i, seed in enumerate(seeds):
        def report(p: Progress, i: int = i) -> None:
            if progress is not None:
                eta = None if p.eta_seconds is None else p.eta_seconds + (n - 1 - i) * (
                    p.eta_seconds / max(1, p.total - p.step) * p.total)
                progress(Progress(i * p.total + p.step, n * p.total, p.loss, eta))

        replicate = options.model_copy(update={"seed": seed, "replicates": 1})
        results.append(adapt(base, config, train, method, replicate,  # type: ignore[arg-type]
                             progress=report, **kwargs))  # type: ignore[arg-type]
    records = [r.policy for r in results if r.policy is not None]
    agreement, typical = (policy_agreement(records) if len(records) == n
                          else (None, [float("-inf")] * n))
    validation: list[float | None] = [None] * n
    if n == 1:
        return Replicates(results, seeds, 0, "a single replicate", None, validation)
    if scorer is not None:
        scores = [scorer(r) for r in results]
        validation = list(scores)
        best = int(np.argmax(scores))
        listed = ", ".join(f"{v:.3f}" for v in scores)
        reason = (f"best mean surface Dice on the validation scans ({scores[best]:.3f}; "
                  f"replicates {listed})")
        return Replicates(results, seeds, best, reason, agreement, validation)
    if agreement is not None and max(typical) > float("-inf"):
        best = int(np.argmax(typical))
        reason = (f"no validation scans: the most typical policy (mean rank agreement "
                  f"{typical[best]:.2f} with the other replicates)")
        return Replicates(results, seeds, best, reason, agreement, validation)
    late = [_late_loss(r) for r in results]
    best = int(np.argmin(late))
    reason = f"no validation scans: the lowest late training loss ({late[best]:.4f})"
    return Replicates(results, seeds, best, reason, agreement, validation)

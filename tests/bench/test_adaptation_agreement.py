"""The adaptation benchmark's policy agreement: which runs it compares (bench/adaptation_stats)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# the benchmark's helper modules import each other by bare name, as bench/adaptation.py does
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from adaptation_stats import (  # noqa: E402
    policy_agreement,
    policy_signature,
    policy_variance,
    replicate_spread,
)

UP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
DOWN = UP[::-1]
OTHER = [0.3, 0.1, 0.6, 0.2, 0.5, 0.4]  # neither the same order as UP nor its reverse


def run(probability: list[float], *, target: str = "b", fold: int = 0, seed: int = 0,
        budget: Any = 12, replicate: int | None = None, method: str = "spottune",
        frequency: list[float] | None = None, test_sdice: float | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"method": method, "budget": budget, "source_site": "a",
                              "target_site": target, "fold": fold, "seed": seed,
                              "probability": probability, "frequency": frequency,
                              "test_sdice": test_sdice}
    if replicate is not None:  # runs made before replicates have no such field
        record["replicate"] = replicate
    return record


def test_identical_replicates_agree_fully() -> None:
    result = policy_agreement([run(UP), run(UP, replicate=1), run(UP, replicate=2)])
    assert result["same_source_across_replicates"] == pytest.approx(1.0)
    assert result["n_same_source"] == 3
    # no pair of different seeds or sites: the other figures are empty
    assert result["same_site_across_seeds"] is None and result["n_same_site"] == 0
    assert result["across_sites"] is None and result["n_across_sites"] == 0


def test_reversed_replicates_disagree_fully() -> None:
    result = policy_agreement([run(UP, replicate=0), run(DOWN, replicate=1)])
    assert result["same_source_across_replicates"] == pytest.approx(-1.0)
    assert result["n_same_source"] == 1


def test_replicates_pair_only_within_one_split() -> None:
    runs = [
        run(UP), run(UP, replicate=1),  # the one replicate pair: +1
        run(DOWN, fold=1, replicate=1),  # another fold: no replicate pair with fold 0
        run(DOWN, seed=1, replicate=2),  # another seed
        run(DOWN, budget=5, replicate=1),  # another budget
        run(DOWN, target="c", replicate=1),  # another pair
        run(DOWN, replicate=1, method="spottune-global"),  # another method
    ]
    result = policy_agreement(runs)
    assert result["n_same_source"] == 1
    assert result["same_source_across_replicates"] == pytest.approx(1.0)


def test_seed_and_site_comparisons_use_replicate_zero_only() -> None:
    base = [run(UP), run(DOWN, seed=1), run(UP, target="c")]
    before = policy_agreement(base)
    assert before["same_site_across_seeds"] == pytest.approx(-1.0)
    assert before["n_same_site"] == 1
    assert before["across_sites"] == pytest.approx(1.0)
    assert before["n_across_sites"] == 1
    # replicates of those runs, some disagreeing, change neither figure
    extra = [run(OTHER, replicate=1), run(DOWN, seed=1, replicate=1),
             run(DOWN, target="c", replicate=1)]
    after = policy_agreement(base + extra)
    for key in ("same_site_across_seeds", "across_sites", "n_same_site", "n_across_sites"):
        assert after[key] == before[key]
    # replicate pairs: (UP, OTHER), (DOWN, DOWN) and (UP, DOWN)
    assert after["n_same_source"] == 3
    assert after["same_source_across_replicates"] == pytest.approx(
        (policy_agreement([run(UP), run(OTHER, replicate=1)])["same_source_across_replicates"]
         + 1.0 - 1.0) / 3)


def test_frequency_agreement_and_constant_vectors() -> None:
    runs = [run(UP, frequency=UP), run(UP, replicate=1, frequency=DOWN),
            run(UP, replicate=2, frequency=[0.5] * 6)]  # constant: no correlation
    result = policy_agreement(runs)
    assert result["same_source_across_replicates"] == pytest.approx(1.0)
    assert result["n_same_source"] == 3
    assert result["frequency_same_source_across_replicates"] == pytest.approx(-1.0)
    assert result["n_frequency_same_source"] == 1


def test_replicate_spread() -> None:
    runs = [run(UP, test_sdice=0.5), run(UP, replicate=1, test_sdice=0.7),
            run(UP, fold=1, test_sdice=0.3), run(UP, fold=1, replicate=1, test_sdice=0.4),
            run(UP, budget=5, test_sdice=0.1)]  # no replicates at this budget: not listed
    (spread,) = replicate_spread(runs)
    assert spread["budget"] == 12 and spread["splits"] == 2
    assert spread["test_sdice_by_replicate"] == pytest.approx({"0": 0.4, "1": 0.55})
    assert spread["mean_range"] == pytest.approx(0.15)


def test_a_scanner_signature_shows_in_the_fold_means() -> None:
    # each fold's runs scatter around its pair's order: their mean recovers it, so the same pair
    # agrees across folds (+1) and the two pairs, ordered oppositely, disagree (-1)
    runs = []
    for fold in range(3):
        for budget, noise in ((5, 0.25), (12, -0.25)):
            jitter = [noise * (i % 2) for i in range(len(UP))]
            runs.append(run([u + j for u, j in zip(UP, jitter, strict=True)], target="b",
                            fold=fold, seed=fold, budget=budget))
            runs.append(run([d + j for d, j in zip(DOWN, jitter, strict=True)], target="c",
                            fold=fold, seed=fold, budget=budget))
    result = policy_signature(runs)
    assert result["runs_per_mean"] == 2
    assert result["same_pair_across_folds"] == pytest.approx(1.0)
    assert result["n_same_pair"] == 2 * 3  # 3 pairs of folds per target site
    assert result["other_pairs_across_folds"] == pytest.approx(-1.0)
    assert result["n_other_pairs"] == 6
    assert result["other_pairs_same_fold"] == pytest.approx(-1.0)
    assert result["n_other_pairs_same_fold"] == 3


def test_a_source_model_signature_shows_within_a_fold() -> None:
    # the order follows the fold (its source model), whatever the target site
    orders = [UP, DOWN, OTHER]
    runs = [run(orders[fold], target=target, fold=fold, seed=fold)
            for fold in range(3) for target in ("b", "c")]
    result = policy_signature(runs)
    assert result["other_pairs_same_fold"] == pytest.approx(1.0)
    assert result["same_pair_across_folds"] < 0.5
    assert result["other_pairs_across_folds"] == pytest.approx(result["same_pair_across_folds"])


def test_same_site_pairs_are_split_by_fold() -> None:
    """Seeds of one fold share the training subject and held-out head; other folds do not."""
    runs = [run(UP, seed=0), run(UP, seed=1),  # same fold, other seed: +1
            run(DOWN, fold=1, seed=2)]  # another fold: -1 against each of the two
    result = policy_agreement(runs)
    assert result["n_same_site"] == 3
    assert result["same_site_same_fold"] == pytest.approx(1.0)
    assert result["n_same_site_same_fold"] == 1
    assert result["same_site_other_fold"] == pytest.approx(-1.0)
    assert result["n_same_site_other_fold"] == 2
    assert result["same_site_across_seeds"] == pytest.approx(-1 / 3)


SITES = ("b", "c", "d")


def crossed(probability: Any, budgets: tuple[Any, ...] = (5, 12)) -> list[dict[str, Any]]:
    """Replicate-0 runs for 3 source models (fold f, seed f) x 3 target sites at each budget,
    each run's per-gate probabilities given by probability(fold, site index)."""
    return [run(list(probability(fold, i)), target=site, fold=fold, seed=fold, budget=budget)
            for budget in budgets for fold in range(3) for i, site in enumerate(SITES)]


def test_a_site_signature_is_told_apart_from_the_source_model() -> None:
    # the probabilities follow the target site, the source model only adds a constant shift:
    # the site explains the pattern, the source model the level, nothing is left over
    runs = crossed(lambda fold, i: np.roll(UP, 2 * i) + 0.05 * fold)
    whole = policy_variance(runs)
    assert whole["pairs"] == 3 and whole["source_models"] == 3 and whole["budgets"] == ["5", "12"]
    assert whole["site"] + whole["source_model"] + whole["residual"] == pytest.approx(1.0)
    assert whole["residual"] == pytest.approx(0.0, abs=1e-12)
    assert whole["site"] > 0.9 and whole["site"] > whole["site_chance"] + 0.5
    assert whole["p_site"] < 0.05
    where = policy_variance(runs, pattern=True)  # each run centred: the source's shift is gone
    assert where["site"] == pytest.approx(1.0) and where["source_model"] == pytest.approx(0.0)


def test_a_source_model_preference_is_not_a_site_signature() -> None:
    # the order follows the source model whatever the site (what the Spearman comparison across
    # sites, which pairs runs of one source model, would read as sites agreeing)
    orders = [UP, DOWN, OTHER]
    runs = crossed(lambda fold, i: orders[fold])
    result = policy_variance(runs)
    assert result["site"] == pytest.approx(0.0, abs=1e-12)
    assert result["source_model"] == pytest.approx(1.0)
    assert result["p_site"] == pytest.approx(1.0)  # every shuffle does at least as well
    assert policy_agreement(runs)["across_sites"] == pytest.approx(1.0)


def test_noise_sits_at_the_chance_level() -> None:
    rng = np.random.default_rng(3)
    noise = {(fold, i, b): rng.random(len(UP)) for fold in range(3) for i in range(3)
             for b in (5, 12)}
    runs = [run(list(noise[fold, i, b]), target=site, fold=fold, seed=fold, budget=b)
            for b in (5, 12) for fold in range(3) for i, site in enumerate(SITES)]
    result = policy_variance(runs, permutations=500)
    assert result["p_site"] > 0.05
    assert abs(result["site"] - result["site_chance"]) < 0.2


def test_incomplete_source_models_are_left_out() -> None:
    runs = crossed(lambda fold, i: np.roll(UP, 2 * i))
    runs.append(run(UP, target="b", fold=3, seed=3, budget=5))  # one pair only: not a block
    assert policy_variance(runs)["source_models"] == 3
    assert policy_variance(runs[:3] + runs[-1:])["site"] is None  # one source model: nothing

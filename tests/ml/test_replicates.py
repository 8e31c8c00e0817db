"""Replicated adaptations and the policy report's words."""

from __future__ import annotations

import pytest

from spottune.ml.preparation import PreparedVolume
from spottune.ml.readout import PolicyRecord, stage_summary, where_the_shift_lives
from spottune.ml.replicates import adapt_replicates, rank_agreement
from spottune.ml.report import render_report_html
from spottune.ml.train import AdaptOptions, AdaptResult, SourceOptions, train_source

NAMES = ["init.conv", "init.block0", "down1.down", "down1.block0", "bottleneck.block0",
         "up1.block0", "out.block0", "out.conv", "skip.top"]
STAGES = ["init", "init", "down1", "down1", "bottleneck", "up1", "out", "out", "skip"]


def record(probability: list[float]) -> PolicyRecord:
    return PolicyRecord(NAMES, STAGES, [float(p > 0.5) for p in probability], probability,
                        "instance", 0.01, "spottune")


@pytest.fixture(scope="module")
def source(source_volumes: list[PreparedVolume]) -> AdaptResult:
    options = SourceOptions(width=4, depth=2, blocks_per_stage=1, patch_size=32, iterations=20,
                            batch_size=8, learning_rate=0.05, seed=0)
    return train_source(source_volumes, options)


def test_replicates_train_each_seed_and_deliver_the_best_on_validation(
    source: AdaptResult, target_volumes: list[PreparedVolume]
) -> None:
    options = AdaptOptions(iterations=4, batch_size=4, learning_rate=0.05, patch_size=32,
                           seed=7, replicates=3)
    steps: list[tuple[int, int]] = []
    scored: list[AdaptResult] = []
    scores = iter([0.2, 0.9, 0.5])  # called once per replicate, in seed order

    def scorer(result: AdaptResult) -> float:
        scored.append(result)
        return next(scores)

    outcome = adapt_replicates(
        source.model, source.config, target_volumes, "spottune", options, scorer=scorer,
        progress=lambda p: steps.append((p.step, p.total)))
    results = outcome.results
    assert outcome.seeds == [7, 8, 9] and len(results) == 3 and scored == results
    assert outcome.delivered == 1 and outcome.result is results[1]
    assert "validation" in outcome.reason and outcome.validation == [0.2, 0.9, 0.5]
    assert steps[-1] == (12, 12) and [s for s, _ in steps] == sorted(s for s, _ in steps)
    assert outcome.agreement is None or -1.0 <= outcome.agreement <= 1.0
    # distinct seeds train distinct twins
    first, second = (r.model.state_dict() for r in results[:2])
    assert any((first[k] != second[k]).any() for k in first if k.startswith("trainable."))
    assert outcome.summary()["delivered_seed"] == 8


def test_without_validation_the_most_typical_policy_is_delivered(
    source: AdaptResult, target_volumes: list[PreparedVolume]
) -> None:
    options = AdaptOptions(iterations=3, batch_size=4, learning_rate=0.05, patch_size=32,
                           replicates=2)
    outcome = adapt_replicates(source.model, source.config, target_volumes, "finetune-first",
                               options)
    assert "training loss" in outcome.reason  # a fixed method has no policy to compare
    single = adapt_replicates(source.model, source.config, target_volumes, "spottune",
                              options.model_copy(update={"replicates": 1}))
    assert single.delivered == 0 and single.agreement is None


def test_rank_agreement() -> None:
    assert rank_agreement([0.1, 0.5, 0.9], [0.2, 0.3, 0.99]) == pytest.approx(1.0)
    assert rank_agreement([0.1, 0.5, 0.9], [0.9, 0.5, 0.1]) == pytest.approx(-1.0)
    assert rank_agreement([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) is None


@pytest.mark.parametrize(
    ("probability", "words"),
    [
        ([0.95, 0.9, 0.7, 0.6, 0.1, 0.1, 0.1, 0.1, 0.8], "first stages"),
        ([0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.8, 0.7, 0.1], "decoder"),
        ([0.9, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1], "several depths"),
        ([0.1] * 9, "kept the source weights everywhere"),
    ],
)
def test_the_report_says_where_the_shift_lives(probability: list[float], words: str) -> None:
    text = where_the_shift_lives(record(probability))
    assert words in text
    tuned = [n for n, p in zip(NAMES, probability, strict=True) if p > 0.5]
    assert all(name in text for name in tuned)
    assert (f"fine-tuned {len(tuned)} of {len(NAMES)} blocks" in text) == bool(tuned)
    stages = {row["stage"]: row for row in stage_summary(record(probability))}
    assert list(stages) == ["init", "down1", "bottleneck", "up1", "out", "skip"]
    assert stages["init"]["finetune_probability"] == pytest.approx(
        (probability[0] + probability[1]) / 2)


def test_report_shows_shift_replicates_and_validation() -> None:
    page = render_report_html(
        title="t", policy=record([0.95, 0.9, 0.7, 0.6, 0.1, 0.1, 0.1, 0.1, 0.8]), history=[],
        metrics_table=None, overlays=[],
        validation_table=[{"scan": "v1", "sdice_before": 0.41, "sdice_after": 0.63}],
        replicates={"seeds": [0, 1, 2], "delivered_seed": 1, "agreement": 0.83,
                    "reason": "best mean surface Dice on the validation scans"})
    assert "Where the shift lives" in page and "first stages" in page
    assert "0.83" in page and "Delivered: seed 1" in page
    assert "0.6300" in page and "Validation scans" in page
    assert "Consistent: the replicates ranked the gates alike" in page


@pytest.mark.parametrize(
    ("agreement", "seeds", "verdict"),
    [(0.03, [0, 1, 2], "Not consistent (agreement 0.03)"),
     (0.62, [0, 1, 2], "Partly consistent (agreement 0.62)"),
     (None, None, "One replicate")],
)
def test_report_says_what_replicate_agreement_lets_a_clinic_read(
    agreement: float | None, seeds: list[int] | None, verdict: str
) -> None:
    replicates = (None if seeds is None else
                  {"seeds": seeds, "delivered_seed": 0, "agreement": agreement, "reason": "r"})
    page = render_report_html(
        title="t", policy=record([0.95, 0.9, 0.7, 0.6, 0.1, 0.1, 0.1, 0.1, 0.8]), history=[],
        metrics_table=None, overlays=[], replicates=replicates)
    assert verdict in page
    assert ("not a fingerprint of this scanner" in page) == (agreement == 0.03)

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from spottune.ml.config import GatingConfig, ModelConfig
from spottune.ml.network import UNet
from spottune.ml.preparation import PreparedVolume
from spottune.ml.spottune import FrozenNorm, SpotTUNet
from spottune.ml.train import (
    AdaptOptions,
    AdaptResult,
    Cancelled,
    Progress,
    SourceOptions,
    adapt,
    default_lambda,
    paper_lambda,
    policy_record,
    train_source,
)

FAST: dict[str, Any] = {"batch_size": 4, "learning_rate": 0.05}


@pytest.fixture(scope="module")
def source(source_volumes: list[PreparedVolume]) -> AdaptResult:
    """A source model briefly trained on phantoms (site a); targets are intensity-inverted."""
    options = SourceOptions(width=8, depth=2, blocks_per_stage=1, patch_size=32, iterations=60,
                            batch_size=8, learning_rate=0.05, seed=0)
    return train_source(source_volumes, options)


def net(result: AdaptResult) -> UNet:
    assert isinstance(result.model, UNet)
    return result.model


@pytest.mark.parametrize(
    ("n_slices", "expected"),
    [(1, 0.010), (5, 0.010), (8, 0.007), (12, 0.012), (24, 0.005), (90, 0.007), (100, 0.007),
     (540, 0.005), (800, 0.0), (5000, 0.0)],
)
def test_default_lambda_follows_the_paper(n_slices: int, expected: float) -> None:
    assert paper_lambda(n_slices) == expected
    # the paper's schedule (and anything longer) gets the paper's value
    assert default_lambda(n_slices, 6000) == pytest.approx(expected)
    assert default_lambda(n_slices, 20_000) == pytest.approx(expected)


@pytest.mark.parametrize("n_slices", [5, 12, 90, 800])
def test_a_short_schedule_gets_the_lambda_chosen_for_it(n_slices: int) -> None:
    short = 0.1  # chosen on the benchmark's validation scans at 400 and 800 iterations
    assert default_lambda(n_slices, 800) == pytest.approx(short)
    assert default_lambda(n_slices, 400) == pytest.approx(short)
    assert default_lambda(n_slices, 50) == pytest.approx(short)
    between = [default_lambda(n_slices, it) for it in (800, 1600, 3200, 6000)]
    assert between == sorted(between, reverse=True)  # falls toward the paper's value
    assert paper_lambda(n_slices) < between[1] < short


@pytest.mark.parametrize(
    "fields", [{"iterations": 0}, {"batch_size": 0}, {"learning_rate": -1.0}, {"lambda_reg": -1},
               {"policy": "random"}, {"patch_size": 4}, {"epochs": 3}],
)
def test_adapt_options_bounds(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AdaptOptions(**fields)  # type: ignore[arg-type]


def test_source_training_learns(source: AdaptResult) -> None:
    assert source.method == "scratch" and isinstance(source.model, UNet)
    assert source.config.gating is None and source.config.width == 8
    losses = [h["loss"] for h in source.history]
    assert len(losses) == 60 and sum(losses[-10:]) < 0.5 * sum(losses[:10])


def _share_finetuned(result: AdaptResult) -> float:
    assert result.policy is not None
    return sum(result.policy.frequency) / len(result.policy.frequency)


def test_lambda_decides_how_much_is_finetuned(
    source: AdaptResult, target_volumes: list[PreparedVolume]
) -> None:
    def run(lambda_reg: float) -> AdaptResult:
        options = AdaptOptions(iterations=30, lambda_reg=lambda_reg, policy="global",
                               seed=0, **FAST)
        return adapt(net(source), source.config, target_volumes, "spottune", options)

    heavy, free = run(10.0), run(0.0)
    assert _share_finetuned(heavy) <= 0.15  # (almost) nothing fine-tuned
    assert _share_finetuned(free) >= 0.4  # the inverted domain makes fine-tuning pay
    assert free.history[-1]["loss"] < free.history[0]["loss"]
    for result in (heavy, free):  # global policy: the result is the exported plain U-Net
        assert type(result.model) is UNet and result.config.gating is None


def test_spottune_instance_result(source: AdaptResult,
                                  target_volumes: list[PreparedVolume]) -> None:
    options = AdaptOptions(iterations=3, **FAST)
    result = adapt(net(source), source.config, target_volumes, "spottune", options)
    assert isinstance(result.model, SpotTUNet) and not result.model.training
    assert result.config.gating is not None and result.config.gating.policy == "instance"
    # 12 slices, every 3rd annotated; a 3-iteration schedule gets the short-schedule lambda
    assert result.lambda_reg == default_lambda(4, 3) == pytest.approx(0.1)
    assert result.policy is not None and len(result.policy.frequency) == 14
    record = policy_record(result.model, [v.image for v in target_volumes])
    assert all(0.0 <= f <= 1.0 for f in record.frequency + record.probability)
    assert record.to_dict()["gate_names"][0] == "init.conv"


@pytest.mark.parametrize(
    ("method", "changed"),
    [("finetune-first", {"init.conv", "init.block0"}),
     ("finetune-last", {"out.block0", "out.conv", "out.norm"}),
     ("none", set())],
)
def test_fixed_methods_train_only_their_units(
    source: AdaptResult, target_volumes: list[PreparedVolume], method: str, changed: set[str]
) -> None:
    result = adapt(net(source), source.config, target_volumes, method,
                   AdaptOptions(iterations=3, **FAST))
    assert isinstance(result.model, UNet) and result.config == source.config
    before, after = source.model.state_dict(), result.model.state_dict()
    moved = {key for key in before if not torch.equal(before[key], after[key])}
    moved_units = {unit for unit in (s.name for s in net(source).units)
                   if any(key.startswith(unit + ".") for key in moved)}
    assert moved_units == changed  # weights and BatchNorm statistics of the rest untouched


def test_adabn_reestimates_statistics_only(
    source: AdaptResult, target_volumes: list[PreparedVolume]
) -> None:
    result = adapt(net(source), source.config, target_volumes, "none",
                   AdaptOptions(adabn=True, **FAST))
    before, after = source.model.state_dict(), result.model.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same != key.endswith(("running_mean", "running_var", "num_batches_tracked")), key
    assert result.model.get_submodule("init.block0.unit1.norm").momentum == 0.1


@pytest.mark.parametrize("frozen_norm", ["source", "target"])
def test_spottune_adabn_gives_frozen_twins_target_statistics_once(
    source: AdaptResult, target_volumes: list[PreparedVolume], frozen_norm: FrozenNorm
) -> None:
    """AdaBN re-estimates the statistics once, before the twins are made. Frozen twins keep the
    source's weights either way; on source statistics ("source") they keep the re-estimated
    statistics untouched by training, on batch statistics ("target", the default) training moves
    those statistics on."""
    adabn_only = adapt(net(source), source.config, target_volumes, "none",
                       AdaptOptions(adabn=True, **FAST)).model.state_dict()
    options = AdaptOptions(iterations=3, adabn=True, **FAST)
    result = adapt(net(source), source.config, target_volumes, "spottune", options,
                   frozen_norm=frozen_norm)
    assert isinstance(result.model, SpotTUNet)
    frozen = result.model.frozen.state_dict()
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for key, value in source.model.state_dict().items():
        if not key.endswith(statistics):
            assert torch.equal(frozen[key], value), key  # weights stay the source's
        elif frozen_norm == "source":
            assert torch.equal(frozen[key], adabn_only[key]), key
    key = "init.block0.unit1.norm.running_mean"
    assert not torch.equal(frozen[key], source.model.state_dict()[key])
    assert torch.equal(frozen[key], adabn_only[key]) == (frozen_norm == "source")


@pytest.mark.parametrize("method", ["finetune-all", "spottune"])
def test_same_seed_same_loss_history(
    source: AdaptResult, target_volumes: list[PreparedVolume], method: str
) -> None:
    def history(seed: int) -> list[float]:
        options = AdaptOptions(iterations=4, seed=seed, **FAST)
        result = adapt(net(source), source.config, target_volumes, method, options)
        return [h["loss"] for h in result.history]

    assert history(3) == history(3)
    assert history(3) != history(4)


def test_progress_and_cancel(source: AdaptResult, target_volumes: list[PreparedVolume]) -> None:
    reports: list[Progress] = []
    with pytest.raises(Cancelled):
        adapt(net(source), source.config, target_volumes, "finetune-all",
              AdaptOptions(iterations=50, **FAST), progress=reports.append,
              should_stop=lambda: len(reports) >= 2)
    assert [r.step for r in reports] == [1, 2]
    assert all(r.total == 50 and r.loss is not None and r.eta_seconds is not None
               for r in reports)


@pytest.mark.parametrize(
    ("method", "config", "match"),
    [("finetune-middle", None, "unknown method"),
     ("spottune", ModelConfig(width=8, depth=2, blocks_per_stage=1,
                              gating=GatingConfig(policy="global")), "plain UNet")],
)
def test_bad_requests_are_refused(source: AdaptResult, target_volumes: list[PreparedVolume],
                                  method: str, config: ModelConfig | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        adapt(net(source), config or source.config, target_volumes, method, AdaptOptions())


def test_patch_size_must_fit_the_model(source: AdaptResult,
                                       target_volumes: list[PreparedVolume]) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        adapt(net(source), source.config, target_volumes, "finetune-all",
              AdaptOptions(patch_size=30, iterations=1))


@pytest.mark.parametrize("frozen_norm", ["source", "target"])
def test_global_export_changes_only_the_chosen_units(
    source: AdaptResult, target_volumes: list[PreparedVolume], frozen_norm: FrozenNorm
) -> None:
    """Units kept frozen keep the source's weights bit for bit, and its statistics too on source
    statistics; on batch statistics (the default) their statistics follow the target domain."""
    options = AdaptOptions(iterations=6, policy="global", lambda_reg=0.0, **FAST)
    result = adapt(net(source), source.config, target_volumes, "spottune", options,
                   frozen_norm=frozen_norm)
    assert isinstance(result.model, UNet) and result.config.gating is None
    assert result.policy is not None
    chosen = {name for name, share in zip(result.policy.gate_names, result.policy.frequency,
                                          strict=True) if share > 0.5}
    assert chosen, "with lambda 0 on an inverted domain some twin should be fine-tuned"
    before, after = source.model.state_dict(), result.model.state_dict()
    frozen_stats_moved = []
    for key, value in before.items():
        unit = next(name for name in result.policy.gate_names if key.startswith(name + "."))
        if unit in chosen:
            continue
        if key.endswith("running_mean"):
            frozen_stats_moved.append(not torch.equal(after[key], value))
        elif not key.endswith(("running_var", "num_batches_tracked")) or frozen_norm == "source":
            assert torch.equal(after[key], value), key
    assert frozen_stats_moved and (any(frozen_stats_moved) == (frozen_norm == "target"))
    stats = [key for key in after if key.endswith("running_mean")
             and any(key.startswith(name + ".") for name in chosen)]
    assert stats and all(not torch.equal(after[key], before[key]) for key in stats)


def test_global_bn_reestimation_changes_only_the_chosen_units_statistics(
    source: AdaptResult, target_volumes: list[PreparedVolume]
) -> None:
    """Re-estimation (off by default) rewrites the chosen units' running statistics from whole
    target slices and nothing else: same seed, same weights, same configuration."""
    options = AdaptOptions(iterations=6, policy="global", lambda_reg=0.0, **FAST)
    runs = [adapt(net(source), source.config, target_volumes, "spottune", options,
                  global_bn_reestimate=flag) for flag in (False, True)]
    kept, redone = (r.model.state_dict() for r in runs)
    assert runs[0].policy is not None and runs[1].policy is not None
    assert runs[0].policy.frequency == runs[1].policy.frequency
    changed = {key for key in kept if not torch.equal(kept[key], redone[key])}
    assert changed, "re-estimation should move some statistics"
    assert all(key.endswith(("running_mean", "running_var", "num_batches_tracked"))
               for key in changed), changed
    chosen = [name for name, share in zip(runs[0].policy.gate_names, runs[0].policy.frequency,
                                          strict=True) if share > 0.5]
    assert all(any(key.startswith(name + ".") for name in chosen) for key in changed)


@pytest.mark.parametrize(("share", "searched"), [(0.25, 2), (0.75, 6)])
def test_the_global_search_share_splits_the_schedule(
    source: AdaptResult, target_volumes: list[PreparedVolume], share: float, searched: int
) -> None:
    """The global policy searches for round(share * iterations) steps, then fine-tunes the
    exported configuration: only search steps carry the penalty on trainable twins (a large
    lambda makes them stand out), and they come first."""
    options = AdaptOptions(iterations=8, policy="global", lambda_reg=20.0, **FAST)
    result = adapt(net(source), source.config, target_volumes, "spottune", options,
                   global_search_share=share)
    losses = [h["loss"] for h in result.history]
    penalised = [loss > 2.0 for loss in losses]
    assert penalised[:searched] == [True] * searched
    assert not any(penalised[searched:])
    # the rest fine-tunes the exported configuration, unless the search chose no trainable twin
    assert len(losses) in (searched, 8)


def test_the_global_search_share_must_be_a_share(
    source: AdaptResult, target_volumes: list[PreparedVolume]
) -> None:
    options = AdaptOptions(iterations=4, policy="global", **FAST)
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="global_search_share"):
            adapt(net(source), source.config, target_volumes, "spottune", options,
                  global_search_share=share)

"""Profiles of the adaptation benchmark: resolution, model, schedule, budgets, pairs."""

from __future__ import annotations

from dataclasses import dataclass

WHOLE_VOLUME = "volume"


@dataclass(frozen=True)
class Profile:
    """Resolution, model and schedule of one benchmark profile (iterations = batches).

    Both optimisers are SGD Nesterov; the learning rate drops x0.1 at 80% (source) / 75%
    (adaptation) of the iterations, as in train.py.
    """

    spacing_mm: tuple[float, float]  # in-plane spacing of the model's slices
    width: int
    blocks_per_stage: int
    patch_size: int
    batch_size: int
    source_iterations: int  # source models and oracles
    source_learning_rate: float
    adapt_iterations: int
    adapt_learning_rate: float
    budgets: tuple[str, ...]  # "5", "12", ... (every k-th slice) or "volume"
    seeds: int
    pairs: tuple[tuple[str, str], ...]
    test_per_head: int | None  # test subjects per other head (None: all)
    unlabelled_volumes: int | None  # target volumes AdaBN re-estimates on (None: the whole pool)


ALL_BUDGETS = ("5", "12", "45", "90", WHOLE_VOLUME)
PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        spacing_mm=(4.0, 4.0),
        width=4,
        blocks_per_stage=1,
        patch_size=48,
        batch_size=4,
        source_iterations=30,
        source_learning_rate=0.05,
        adapt_iterations=10,
        adapt_learning_rate=0.01,
        budgets=("5", WHOLE_VOLUME),
        seeds=1,
        pairs=(("siemens15", "philips3"),),
        test_per_head=1,
        unlabelled_volumes=1,
    ),
    # 2-core CPU, one thread per process: 2 mm in-plane, a slim U-Net (width 8, one block per
    # stage), schedules ~10x (source) and 30x (adaptation) shorter with larger learning rates.
    # As in the paper, adaptation uses the source learning rate. Chosen on the validation split
    # (--split validation, siemens15->philips3, seed 0), never on test subjects: 200 iterations at
    # 0.05 beat 60 at 0.01 for every method at 5 and 45 slices (e.g. SpotTUnet sDice 0.231 vs 0.167
    # at 5 slices, finetune-all 0.215 vs 0.157 at 45); more iterations do not fit in an hour.
    "quick": Profile(
        spacing_mm=(2.0, 2.0),
        width=8,
        blocks_per_stage=1,
        patch_size=64,
        batch_size=8,
        source_iterations=1000,
        source_learning_rate=0.05,
        adapt_iterations=200,
        adapt_learning_rate=0.05,
        budgets=ALL_BUDGETS,
        seeds=3,
        pairs=(("siemens15", "philips3"), ("siemens15", "ge3")),
        test_per_head=1,
        unlabelled_volumes=2,
    ),
    # the reference: 0.95 mm, 256x256 patches, 100x100 batches of 16 (source), 60x100 (adaptation)
    "paper": Profile(
        spacing_mm=(0.95, 0.95),
        width=16,
        blocks_per_stage=3,
        patch_size=256,
        batch_size=16,
        source_iterations=10_000,
        source_learning_rate=1e-3,
        adapt_iterations=6_000,
        adapt_learning_rate=1e-3,
        budgets=ALL_BUDGETS,
        seeds=3,
        pairs=(
            ("siemens15", "philips3"),
            ("siemens15", "ge3"),
            ("ge3", "siemens15"),
            ("philips15", "siemens3"),
            ("siemens3", "philips15"),
            ("philips3", "ge3"),
        ),
        test_per_head=None,
        unlabelled_volumes=None,
    ),
}

"""Profiles of the adaptation benchmark: resolution, model, schedule, budgets, pairs, folds."""

from __future__ import annotations

from dataclasses import dataclass

from spottune.ml.train import SHORT_SCHEDULE_LAMBDA

WHOLE_VOLUME = "volume"
Budget = int | str  # a number of annotated slices (every k-th slice), or WHOLE_VOLUME

FIXED_METHODS = ("finetune-all", "finetune-first", "finetune-last")
# method label -> (adapt() method, extra AdaptOptions); "none" and "oracle" are handled apart
ADAPT_METHODS: dict[str, tuple[str, dict[str, object]]] = {
    "finetune-all": ("finetune-all", {}),
    "finetune-first": ("finetune-first", {}),
    "finetune-last": ("finetune-last", {}),
    "spottune": ("spottune", {"policy": "instance"}),
    "spottune-global": ("spottune", {"policy": "global"}),
    "spottune-adabn": ("spottune", {"policy": "instance", "adabn": True}),
}


@dataclass(frozen=True)
class Profile:
    """Resolution, model, schedule and protocol of one benchmark profile (iterations = batches).

    Protocol v2: one fold per head of the data. In a fold, that head is the test head: its
    target-site subjects are the test scans, and no model of the fold (source, oracle, adapted)
    trains on that head's anatomy. The source model trains on the source site's scans of the other
    heads, the oracle on the target site's scans of the other heads, the adaptation on every k-th
    slice of one target-site subject of another head. Validation scans (for choosing settings and
    the best fixed strategy) are other target-site subjects of the non-test heads, never a test
    scan and never the adaptation's training subject. Each fold runs `seeds_per_fold` seeds; a seed
    changes the source model, the oracle, the training subject and the adaptation; a replicate
    (SpotTUnet only) changes only the adaptation's seed.
    """

    spacing_mm: tuple[float, float]  # in-plane spacing of the model's slices
    width: int
    blocks_per_stage: int
    patch_size: int
    batch_size: int
    source_iterations: int  # source models and oracles
    source_learning_rate: float
    adapt_iterations: int
    adapt_learning_rate: float | None  # None: derived from the iteration budget (train.py)
    policy_learning_rate: float | None  # None: derived from the budget (train.py)
    budgets: tuple[Budget, ...]
    seeds_per_fold: int
    pairs: tuple[tuple[str, str], ...]
    validation_per_fold: int  # validation subjects scored per fold
    unlabelled_volumes: int | None  # target volumes AdaBN / BN re-estimation see (None: all)
    methods: tuple[str, ...]
    frozen_norm: str = "target"  # as spottune.ml.train.FROZEN_NORM, chosen on validation
    global_bn_reestimate: bool = False  # spottune-global: see spottune.ml.train._export_finetuned
    lambda_reg: float | None = None  # SpotTUnet's penalty; None: the paper's for the budget
    temperature: float = 0.1  # SpotTUnet's Gumbel-softmax temperature (the reference code's)
    gate_draws: str = "batch"  # spottune-global: gate configurations per step (spottune.py)
    policy_start: str = "random"  # spottune (instance): the agent's initial head (policy.py)
    global_search_share: float = 0.5  # spottune-global: share of iterations searching (train.py)
    # SpotTUnet adaptations per split, as the service's `replicates` option: replicate r trains
    # with adaptation seed seed + r on the same source model, training subject, annotated slices
    # and unlabelled scans (replicate 0 is the split's one run; the main table uses only it)
    replicates: int = 1


CPU_PAIRS = (
    ("siemens15", "philips3"),  # T2-like inversion
    ("siemens15", "siemens3"),  # blur, flat contrast
    ("siemens15", "philips15"),  # thick sagittal slices, steep contrast
    ("siemens15", "ge3"),  # gamma contrast, 1.2 mm LPS
)

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        spacing_mm=(4.0, 4.0), width=4, blocks_per_stage=1, patch_size=32, batch_size=4,
        source_iterations=30, source_learning_rate=0.05, adapt_iterations=10,
        adapt_learning_rate=None, policy_learning_rate=None, budgets=(5, WHOLE_VOLUME),
        seeds_per_fold=1, pairs=(("siemens15", "philips3"),), validation_per_fold=1,
        unlabelled_volumes=1, methods=("finetune-first", "spottune", "spottune-global"),
    ),
    # 2-core CPU, one thread per process: 2 mm in-plane, a slim U-Net (width 8, one block per
    # stage), schedules ~10x (source) and 7.5x (adaptation) shorter than the paper's, the learning
    # rates those budgets get by default (train.default_learning_rate: network 0.010 and policy
    # 0.026 at 800 iterations). 800 adaptation iterations: on the validation scans 400 beat 200 in
    # 20 of 20 method x budget cells (bench/results/choices-iterations-cpu.md), and 800 beat 400
    # in 18 of 20 (choices-iterations-800-all-cpu.md). SpotTUnet's lambda: the library's default
    # up to 800 iterations, explicit so that the units run before it (the paper's value, no
    # lambda_reg in their keys) keep their keys; with --adapt-iterations it stays this value
    # unless --lambda-reg is given.
    "cpu": Profile(
        spacing_mm=(2.0, 2.0), width=8, blocks_per_stage=1, patch_size=64, batch_size=8,
        source_iterations=1000, source_learning_rate=0.05, adapt_iterations=800,
        adapt_learning_rate=None, policy_learning_rate=None, budgets=(5, 12, 45, WHOLE_VOLUME),
        seeds_per_fold=1, pairs=CPU_PAIRS, validation_per_fold=2, unlabelled_volumes=2,
        methods=(*FIXED_METHODS, "spottune", "spottune-global"), lambda_reg=SHORT_SCHEDULE_LAMBDA,
    ),
    # the reference: 0.95 mm, 256x256 patches, 100x100 batches of 16 (source), 60x100 (adaptation)
    "paper": Profile(
        spacing_mm=(0.95, 0.95), width=16, blocks_per_stage=3, patch_size=256, batch_size=16,
        source_iterations=10_000, source_learning_rate=1e-3, adapt_iterations=6_000,
        adapt_learning_rate=1e-3, policy_learning_rate=1e-2,
        budgets=(5, 12, 45, 90, WHOLE_VOLUME), seeds_per_fold=3,
        pairs=(*CPU_PAIRS, ("ge3", "siemens15"), ("philips15", "siemens3")),
        validation_per_fold=3, unlabelled_volumes=None,
        methods=(*FIXED_METHODS, "spottune", "spottune-global", "spottune-adabn"),
    ),
}


def parse_budget(text: str) -> Budget:
    return WHOLE_VOLUME if text == WHOLE_VOLUME else int(text)

"""The adaptation benchmark's units of work, each cached on disk under its full settings.

A unit is a JSON-able dict (`kind`: source, oracle, none, adapt or ceiling, plus what it needs).
Its result is written to `<cache>/<kind>-<sha1 of its settings>.json` (models under
`<cache>/models/`, not committed), so an interrupted profile resumes where it stopped and a
finished one can be re-tabled without running anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from adaptation_grid import Reference, ceiling, score_prediction
from adaptation_profiles import ADAPT_METHODS, WHOLE_VOLUME, Budget, Profile

from spottune.ml.checkpoint import load_model, save_checkpoint
from spottune.ml.config import ModelConfig, Preprocessing
from spottune.ml.inference import segment_volume
from spottune.ml.preparation import PreparedVolume, prepare_volume, slice_voxel_axis
from spottune.ml.train import (
    AdaptOptions,
    SourceOptions,
    adapt,
    paper_lambda,
    policy_learning_rate,
    train_source,
)
from spottune.ml.volumes import Volume, load_mask, load_volume

TEMPERATURE: float = AdaptOptions.model_fields["temperature"].default
SPOTTUNE = tuple(m for m in ADAPT_METHODS if m.startswith("spottune"))  # every gated method
ADDED_LATER: dict[str, tuple[tuple[str, ...], Any]] = {
    "lambda_reg": (SPOTTUNE, None),  # None: the paper's lambda for the budget (paper_lambda)
    "temperature": (SPOTTUNE, TEMPERATURE),
    "policy_start": (("spottune",), "random"),
    "gate_draws": (("spottune-global",), "batch"),
    "global_bn_reestimate": (("spottune-global",), True),
    "global_search_share": (("spottune-global",), 0.5),
}
"""Profile settings added after the first units were cached: (the methods that read one, the value
every earlier unit ran with). A unit's key holds such a setting only where it differs from that
value, so earlier units keep their keys, and a unit without it ran with that value."""

log = logging.getLogger("bench.adaptation")
PROTOCOL = "v2"
CURVE_POINTS = 20  # training-loss points kept per run (means over equal windows)


class Data:
    """The manifest's scans, loaded lazily: (volume, site mask, reference on the common grid)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest = json.loads((root / "manifest.json").read_text())
        self.scans = {scan["id"]: scan for scan in self.manifest["scans"]}
        if any("reference_mask" not in scan for scan in self.scans.values()):
            raise ValueError(f"{root}: manifest has no reference masks; rerun "
                             "`spottune data prepare` (manifest version 2)")
        self._cache: dict[str, tuple[Volume, np.ndarray, Reference]] = {}

    def at(self, site: str, head: str | None = None) -> list[str]:
        return sorted(s["id"] for s in self.scans.values()
                      if s["site"] == site and head in (None, s["head"]))

    def heads(self) -> list[str]:
        return sorted({s["head"] for s in self.scans.values()})

    def load(self, scan_id: str) -> tuple[Volume, np.ndarray, Reference]:
        if scan_id not in self._cache:
            scan = self.scans[scan_id]
            volume = load_volume(self.root / scan["image"])
            mask = load_mask(self.root / scan["mask"], volume)
            reference = Reference.load(str(self.root / scan["reference_mask"]))
            self._cache[scan_id] = (volume, mask, reference)
        return self._cache[scan_id]


@dataclass(frozen=True)
class Split:
    """One fold and seed of one source -> target pair: who trains, who validates, who tests."""

    fold: int
    seed: int
    test_head: str
    source_ids: tuple[str, ...]  # source model
    oracle_ids: tuple[str, ...]  # oracle (target site, non-test heads)
    train_id: str  # the adaptation's annotated subject
    validation_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    unlabelled_ids: tuple[str, ...]


def make_split(data: Data, profile: Profile, source: str, target: str, fold: int,
               k: int) -> Split:
    heads = data.heads()
    test_head = heads[fold % len(heads)]
    others = [h for h in heads if h != test_head]
    seed = fold * profile.seeds_per_fold + k
    train_head = others[k % len(others)]
    pool = data.at(target, train_head)
    train_id = pool[(fold + k) % len(pool)]
    # validation: alternate over the non-test heads, never the training subject
    candidates = [[s for s in data.at(target, h) if s != train_id] for h in others]
    validation: list[str] = []
    while len(validation) < profile.validation_per_fold and any(candidates):
        for group in candidates:
            if group and len(validation) < profile.validation_per_fold:
                validation.append(group.pop((fold + k) % len(group)))
    non_test = [s for h in others for s in data.at(target, h)]
    unlabelled = [train_id, *(s for s in non_test if s != train_id and s not in validation)]
    return Split(
        fold=fold, seed=seed, test_head=test_head,
        source_ids=tuple(s for h in others for s in data.at(source, h)),
        oracle_ids=tuple(non_test), train_id=train_id, validation_ids=tuple(validation),
        test_ids=tuple(data.at(target, test_head)),
        unlabelled_ids=tuple(unlabelled[: profile.unlabelled_volumes]),
    )


def every_kth(n_slices: int, budget: Budget) -> list[int]:
    """Every k-th of `n_slices` slices, k chosen to give about `budget` slices, centred."""
    if budget == WHOLE_VOLUME:
        return list(range(n_slices))
    k = max(1, round(n_slices / int(budget)))
    return list(range(k // 2, n_slices, k))


def _model_settings(profile: Profile) -> dict[str, Any]:
    return {"spacing_mm": list(profile.spacing_mm), "width": profile.width,
            "blocks_per_stage": profile.blocks_per_stage, "patch_size": profile.patch_size,
            "batch_size": profile.batch_size, "source_iterations": profile.source_iterations,
            "source_learning_rate": profile.source_learning_rate}


def unit_key(unit: dict[str, Any]) -> str:
    text = json.dumps({"protocol": PROTOCOL, **unit}, sort_keys=True)
    return f"{unit['kind']}-{hashlib.sha1(text.encode()).hexdigest()[:16]}"


def _method_settings(method: str, settings: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """The adaptation settings that key a unit of `method`. Settings only SpotTUnet reads keep
    their original values for the fixed methods, so changing them reruns SpotTUnet units only;
    settings added later appear in a key only when they differ from the value every earlier unit
    ran with (so earlier units keep their keys)."""
    if not method.startswith("spottune"):
        return {**settings, "policy_learning_rate": None, "frozen_norm": "source"}
    # The policy rate as it will run (an unset one follows train.py's default, which has changed:
    # keyed by value, runs made under an earlier default are not taken for today's).
    options = AdaptOptions(iterations=profile.adapt_iterations,
                           learning_rate=profile.adapt_learning_rate,
                           policy_learning_rate=profile.policy_learning_rate)
    settings = {**settings, "policy_learning_rate": policy_learning_rate(options)}
    for name, (methods, earlier) in ADDED_LATER.items():
        value = getattr(profile, name)
        if method in methods and value != earlier:
            settings[name] = value
    return settings


def model_weights(cache: Path, unit: dict[str, Any]) -> Path:
    """Where a source or oracle unit's weights live (not committed: a fresh checkout retrains
    them, same seed and settings, when a pending unit needs them)."""
    return cache / "models" / f"{unit_key(unit)}.safetensors"


def plan(data: Data, profile: Profile, data_seed: int | None) -> list[dict[str, Any]]:
    """Every unit of the profile, models before the units that need them."""
    models, evals = [], []
    common = {"data_seed": data_seed, **_model_settings(profile)}
    seen: set[str] = set()

    def add(target: list[dict[str, Any]], unit: dict[str, Any]) -> dict[str, Any]:
        key = unit_key(unit)
        if key not in seen:
            seen.add(key)
            target.append(unit)
        return unit

    adapt_settings = {"adapt_iterations": profile.adapt_iterations,
                      "adapt_learning_rate": profile.adapt_learning_rate,
                      "policy_learning_rate": profile.policy_learning_rate,
                      "frozen_norm": profile.frozen_norm,
                      "unlabelled_volumes": profile.unlabelled_volumes}
    for source, target in profile.pairs:
        for fold in range(len(data.heads())):
            for k in range(profile.seeds_per_fold):
                split = make_split(data, profile, source, target, fold, k)
                base = {**common, "seed": split.seed, "fold": fold}
                source_unit = add(models, {"kind": "source", **base, "site": source,
                                           "scan_ids": list(split.source_ids)})
                add(models, {"kind": "oracle", **base, "site": target,
                             "scan_ids": list(split.oracle_ids),
                             "test_ids": list(split.test_ids)})
                for scan_id in split.test_ids:
                    add(models, {"kind": "ceiling", "spacing_mm": list(profile.spacing_mm),
                                 "data_seed": data_seed, "scan_id": scan_id, "site": target})
                pair = {"source_site": source, "target_site": target, "fold": fold,
                        "seed": split.seed, "source_key": unit_key(source_unit),
                        "source_unit": source_unit, "test_ids": list(split.test_ids),
                        "validation_ids": list(split.validation_ids)}
                add(evals, {"kind": "none", **pair})
                for budget in profile.budgets:
                    for method in profile.methods:
                        unit = {"kind": "adapt", **pair,
                                **_method_settings(method, adapt_settings, profile),
                                "method": method, "budget": budget,
                                "train_id": split.train_id,
                                "unlabelled_ids": list(split.unlabelled_ids)}
                        add(evals, unit)  # replicate 0: the key every earlier unit has
                        if method.startswith("spottune"):
                            for r in range(1, profile.replicates):
                                add(evals, unit | {"replicate": r})
    return models + evals


class Runner:
    """Runs units in one process, with that process's own data cache."""

    def __init__(self, data_dir: Path, cache: Path, profile: Profile, device: str) -> None:
        self.data = Data(data_dir)
        self.cache = cache
        self.profile = profile
        self.device = torch.device(device)
        self.prep = Preprocessing(spacing_mm=profile.spacing_mm)
        cache.mkdir(parents=True, exist_ok=True)

    def result_path(self, unit: dict[str, Any]) -> Path:
        return self.cache / f"{unit_key(unit)}.json"

    def run(self, unit: dict[str, Any]) -> dict[str, Any]:
        path = self.result_path(unit)
        if path.is_file():
            result: dict[str, Any] = json.loads(path.read_text())
            return result
        t0 = time.monotonic()
        result = getattr(self, f"_{unit['kind']}")(unit)
        result["seconds"] = round(time.monotonic() - t0, 1)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result) + "\n")
        tmp.replace(path)  # a unit is either cached whole or not at all
        return result

    # -- models -------------------------------------------------------------------------------
    def _prepared(self, scan_id: str, annotated: list[int] | None = None,
                  labelled: bool = True) -> PreparedVolume:
        volume, mask, _ = self.data.load(scan_id)
        return prepare_volume(volume, self.prep, mask if labelled else None, annotated)

    def _train(self, unit: dict[str, Any]) -> tuple[torch.nn.Module, ModelConfig]:
        # apart from the results: save_checkpoint writes a config JSON beside the weights
        weights = model_weights(self.cache, unit)
        weights.parent.mkdir(parents=True, exist_ok=True)
        if weights.is_file():
            return load_model(weights, device=self.device)
        p = self.profile
        options = SourceOptions(width=p.width, blocks_per_stage=p.blocks_per_stage,
                                spacing_mm=p.spacing_mm, patch_size=p.patch_size,
                                iterations=p.source_iterations, batch_size=p.batch_size,
                                learning_rate=p.source_learning_rate, seed=unit["seed"])
        result = train_source([self._prepared(s) for s in unit["scan_ids"]], options,
                              device=self.device)
        save_checkpoint(result.model, result.config, weights)
        return result.model, result.config

    def restore_model(self, unit: dict[str, Any]) -> dict[str, Any]:
        """Retrain a cached source model's weights (same seed, same settings)."""
        self._train(unit)
        return {"kind": unit["kind"], "restored": True}

    def _source(self, unit: dict[str, Any]) -> dict[str, Any]:
        self._train(unit)
        return {"kind": "source"}

    def _oracle(self, unit: dict[str, Any]) -> dict[str, Any]:
        model, _ = self._train(unit)
        return {"kind": "oracle", "scores": self._evaluate(model, unit["test_ids"])}

    def _ceiling(self, unit: dict[str, Any]) -> dict[str, Any]:
        volume, mask, reference = self.data.load(unit["scan_id"])
        return {"kind": "ceiling", "scores": {unit["scan_id"]: ceiling(volume, mask, self.prep,
                                                                       reference)}}

    # -- evaluations --------------------------------------------------------------------------
    def _evaluate(self, model: torch.nn.Module, scan_ids: list[str]) -> dict[str, Any]:
        scores = {}
        for scan_id in scan_ids:
            volume, _, reference = self.data.load(scan_id)
            predicted = segment_volume(model, volume, self.prep, device=self.device,
                                       engine="torch")  # as every cached unit was scored
            scores[scan_id] = score_prediction(predicted, volume, reference)
        return scores

    def _none(self, unit: dict[str, Any]) -> dict[str, Any]:
        model, _ = self._train(unit["source_unit"])
        return {"kind": "none",
                "scores": self._evaluate(model, unit["test_ids"]),
                "validation": self._evaluate(model, unit["validation_ids"])}

    def _adapt(self, unit: dict[str, Any]) -> dict[str, Any]:
        base, config = self._train(unit["source_unit"])
        volume, _, _ = self.data.load(unit["train_id"])
        n_axis = volume.shape[slice_voxel_axis(volume, self.prep)]
        slices = every_kth(n_axis, unit["budget"])
        method, extra = ADAPT_METHODS[unit["method"]]
        later = {name: unit.get(name, earlier) for name, (_, earlier) in ADDED_LATER.items()}
        train = self._prepared(unit["train_id"], slices)
        # a unit without lambda_reg ran with the paper's value for its budget (the library's
        # default before it followed the iteration budget), whatever the default is now
        lambda_reg = (later["lambda_reg"] if later["lambda_reg"] is not None
                      else paper_lambda(int(train.annotated.sum())))
        options = AdaptOptions(
            iterations=unit["adapt_iterations"], batch_size=self.profile.batch_size,
            learning_rate=unit["adapt_learning_rate"],
            policy_learning_rate=unit["policy_learning_rate"],
            # replicate r: adaptation seed seed + r, as spottune.ml.replicates derives them (the
            # source model, training subject, slices and unlabelled scans stay the split's)
            patch_size=self.profile.patch_size, seed=unit["seed"] + unit.get("replicate", 0),
            lambda_reg=lambda_reg, temperature=later["temperature"], **extra)
        needs_unlabelled = options.adabn or options.policy == "global"
        unlabelled = ([self._prepared(s, labelled=False) for s in unit["unlabelled_ids"]]
                      if needs_unlabelled and method == "spottune" else [])
        t0 = time.monotonic()
        result = adapt(base, config, [train], method,
                       options, unlabelled=unlabelled, device=self.device,
                       frozen_norm=unit["frozen_norm"],
                       global_bn_reestimate=later["global_bn_reestimate"],
                       gate_draws=later["gate_draws"], policy_start=later["policy_start"],
                       global_search_share=later["global_search_share"])
        seconds = time.monotonic() - t0
        losses = np.array([h["loss"] for h in result.history])
        curve = ([float(w.mean()) for w in np.array_split(losses, CURVE_POINTS) if w.size]
                 if losses.size else [])
        log.info("%s->%s fold %d seed %d replicate %d budget %s %-15s adapted in %.0f s",
                 unit["source_site"], unit["target_site"], unit["fold"], unit["seed"],
                 unit.get("replicate", 0), unit["budget"], unit["method"], seconds)
        return {
            "kind": "adapt", "n_slices": len(slices), "adapt_seconds": round(seconds, 1),
            "loss_curve": curve,
            "policy": asdict(result.policy) if result.policy is not None else None,
            "scores": self._evaluate(result.model, unit["test_ids"]),
            "validation": self._evaluate(result.model, unit["validation_ids"]),
        }

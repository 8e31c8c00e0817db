"""The adaptation benchmark's cache keys: a setting added later keys only the runs it changes."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from adaptation_profiles import PROFILES  # noqa: E402
from adaptation_runs import _method_settings, unit_key  # noqa: E402

SETTINGS = {"adapt_iterations": 200, "adapt_learning_rate": None, "policy_learning_rate": None,
            "frozen_norm": "target", "unlabelled_volumes": None}


def key(method: str, **profile_changes: object) -> str:
    profile = dataclasses.replace(PROFILES["cpu"], **profile_changes)  # type: ignore[arg-type]
    settings = _method_settings(method, SETTINGS, profile)
    return unit_key({"kind": "adapt", "method": method, **settings})


def test_gate_draws_per_slice_reruns_the_global_policy_only() -> None:
    assert key("spottune-global", gate_draws="slice") != key("spottune-global")
    for method in ("spottune", "finetune-all", "finetune-first"):
        assert key(method, gate_draws="slice") == key(method)


def test_the_default_gate_draws_keep_earlier_keys() -> None:
    profile = PROFILES["cpu"]
    assert profile.gate_draws == "batch"
    settings = _method_settings("spottune-global", SETTINGS, profile)
    assert "gate_draws" not in settings  # units cached before the setting existed still match


def test_a_neutral_policy_start_reruns_the_instance_policy_only() -> None:
    assert key("spottune", policy_start="neutral") != key("spottune")
    for method in ("spottune-global", "finetune-all", "finetune-last"):
        assert key(method, policy_start="neutral") == key(method)
    assert "policy_start" not in _method_settings("spottune", SETTINGS, PROFILES["cpu"])


def test_the_profile_lambda_keys_the_spottune_runs_only() -> None:
    # the cpu profile runs SpotTUnet at the library's short-schedule lambda: its units differ from
    # those run at the paper's value (no lambda_reg in their keys); the fixed strategies' do not
    profile = PROFILES["cpu"]
    for method in ("spottune", "spottune-global"):
        assert _method_settings(method, SETTINGS, profile)["lambda_reg"] == profile.lambda_reg
        assert key(method) != key(method, lambda_reg=None)
    for method in ("finetune-all", "finetune-first", "finetune-last"):
        assert key(method) == key(method, lambda_reg=None)


def test_a_global_search_share_reruns_the_global_policy_only() -> None:
    assert key("spottune-global", global_search_share=0.25) != key("spottune-global")
    for method in ("spottune", "finetune-all", "finetune-first"):
        assert key(method, global_search_share=0.25) == key(method)
    # the default keeps the keys of the units cached before the setting existed
    assert "global_search_share" not in _method_settings("spottune-global", SETTINGS,
                                                         PROFILES["cpu"])

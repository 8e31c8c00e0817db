"""A learned SpotTUnet policy: the record the library produces and the view clinics read."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import fmean
from typing import Any

from pydantic import BaseModel, Field

from spottune.contract.kinds import Method, PolicyKind

FINETUNED_AT = 0.5  # a gate is "fine-tuned" when its trainable twin wins for half the slices


@dataclass
class PolicyRecord:
    """Per gate (same order as gate_names): frequency = share of slices whose argmax decision
    chose the trainable twin; probability = mean softmax probability of the trainable twin."""

    gate_names: list[str]
    gate_stages: list[str]
    frequency: list[float]
    probability: list[float]
    policy: str
    lambda_reg: float | None
    method: str
    replicates: dict[str, Any] | None = None
    """With replicated adaptations: ReplicateSummary fields of the delivered replicate's job."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PolicyGate(BaseModel):
    name: str = Field(description="Where the gate sits, e.g. 'down1.block0'.")
    stage: str = Field(description="U-Net stage of the gate, e.g. 'down1'.")
    finetune_probability: float = Field(
        description="Mean probability of choosing the fine-tuned twin, 0..1.")
    frequency: float = Field(description="Share of slices that chose the fine-tuned twin, 0..1.")


class PolicyStage(BaseModel):
    stage: str
    gates: int = Field(description="Number of gates in the stage.")
    finetune_probability: float = Field(
        description="Mean fine-tune probability of the stage's gates, 0..1.")
    frequency: float = Field(description="Mean frequency of the stage's gates, 0..1.")


class ReplicateSummary(BaseModel):
    """Replicated adaptation: how far the seeds' policies agree, and which one was delivered."""

    seeds: list[int] = Field(description="Seed of each replicate.")
    delivered_seed: int = Field(description="The replicate whose model and masks were delivered.")
    reason: str = Field(description="Why that replicate was delivered.")
    agreement: float | None = Field(
        description="Mean pairwise Spearman correlation of the replicates' per-gate fine-tune "
                    "probabilities (1: the same ranking every time); the policy's confidence.")
    validation_sdice: list[float | None] = Field(
        default_factory=list, description="Mean surface Dice of each replicate on the "
                                          "validation scans, where there are any.")


def describe_shift(gates: list[PolicyGate], stages: list[PolicyStage]) -> str:
    """In words: the blocks the policy fine-tuned, grouped by stage (the stage with the most
    decisive fine-tuning first), and the stages it kept whole."""
    tuned = [g for g in gates if g.frequency >= FINETUNED_AT]
    if not tuned:
        return ("The policy kept the source weights everywhere: this scanner's images are close "
                "enough to the source's that no block needed fine-tuning.")
    by_stage: dict[str, list[PolicyGate]] = {}
    for gate in tuned:
        by_stage.setdefault(gate.stage, []).append(gate)
    order = sorted(by_stage, key=lambda st: -max(g.finetune_probability for g in by_stage[st]))
    named = "; ".join(f"{st} ({', '.join(g.name for g in by_stage[st])})" for st in order)
    kinds = {"early" if st in ("init", "down1")
             else "decoder" if st.startswith(("up", "out")) else "other"
             for st in by_stage if st != "skip"}
    if kinds == {"early"}:
        kind = "in the first stages (low-level features: intensity, contrast, noise)"
    elif kinds == {"decoder"}:
        kind = "in the decoder (how features are turned into a mask)"
    else:
        kind = "at several depths of the network"
    kept = [st.stage for st in stages if st.stage not in by_stage]
    text = (f"The shift lives {kind}: the policy fine-tuned {len(tuned)} of {len(gates)} blocks - "
            f"{named}.")
    if kept:
        text += f" It kept every block of {', '.join(kept)}."
    return text


class PolicyReport(BaseModel):
    """Which blocks of the U-Net the learned policy fine-tunes: where the domain shift lives."""

    method: Method
    policy: PolicyKind = Field(description="Kind of policy that was learned.")
    lambda_reg: float | None = Field(description="Weight of the penalty on fine-tuned blocks.")
    gates: list[PolicyGate] = Field(description="One entry per gate, input to output.")
    stages: list[PolicyStage] = Field(description="Per-stage means, in network order.")
    finetuned_gates: list[str] = Field(
        description=f"Gates whose fine-tuned twin is chosen for at least {FINETUNED_AT:.0%} of "
                    "the slices.")
    shift: str = Field(description="Where the domain shift lives, in words: the stages the "
                                   "policy fine-tuned, strongest first, and those it kept.")
    replicates: ReplicateSummary | None = Field(
        default=None, description="Present when the adaptation was replicated over seeds.")

    @classmethod
    def from_record(cls, record: PolicyRecord | dict[str, Any]) -> PolicyReport:
        """The view of a stored record (``PolicyRecord`` or its ``to_dict()``)."""
        rec = record if isinstance(record, PolicyRecord) else PolicyRecord(**record)
        gates = [
            PolicyGate(name=name, stage=stage, finetune_probability=p, frequency=f)
            for name, stage, p, f in zip(rec.gate_names, rec.gate_stages, rec.probability,
                                         rec.frequency, strict=True)
        ]
        by_stage: dict[str, list[PolicyGate]] = {}
        for gate in gates:
            by_stage.setdefault(gate.stage, []).append(gate)
        stages = [
            PolicyStage(stage=stage, gates=len(members),
                        finetune_probability=fmean(g.finetune_probability for g in members),
                        frequency=fmean(g.frequency for g in members))
            for stage, members in by_stage.items()
        ]
        return cls.model_validate({
            "method": rec.method, "policy": rec.policy, "lambda_reg": rec.lambda_reg,
            "gates": gates, "stages": stages,
            "finetuned_gates": [g.name for g in gates if g.frequency >= FINETUNED_AT],
            "shift": describe_shift(gates, stages), "replicates": rec.replicates,
        })

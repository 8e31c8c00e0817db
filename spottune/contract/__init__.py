"""The job contract: job kinds, methods, policy kinds, options, params and results.

Imports nothing of spottune and no torch, so the API validates requests without the library's
weight, and every room (API, worker, command line, library, benchmarks) reads one definition.
"""

from spottune.contract.kinds import (
    ACTIVE_STATUSES,
    DEVICES,
    METHODS,
    POLICY_KINDS,
    Device,
    JobKind,
    JobStatus,
    Method,
    PolicyKind,
    ScorePhase,
)
from spottune.contract.options import (
    AdaptationOptions,
    InPlaneSpacing,
    PretrainingOptions,
    SegmentationOptions,
    SpacingMm,
)
from spottune.contract.params import (
    MAX_SCANS_PER_JOB,
    PARAMS_OF,
    AdaptationParams,
    JobOut,
    JobParams,
    JobResult,
    MetricsSummary,
    PhaseMean,
    PretrainingParams,
    ProgressOut,
    ScanScore,
    SegmentationParams,
    parse_params,
)
from spottune.contract.policy import (
    PolicyGate,
    PolicyRecord,
    PolicyReport,
    PolicyStage,
    ReplicateSummary,
)

__all__ = [
    "ACTIVE_STATUSES", "DEVICES", "MAX_SCANS_PER_JOB", "METHODS", "PARAMS_OF", "POLICY_KINDS",
    "AdaptationOptions", "AdaptationParams", "Device", "InPlaneSpacing", "JobKind", "JobOut",
    "JobParams", "JobResult", "JobStatus", "Method", "MetricsSummary", "PhaseMean", "PolicyGate",
    "PolicyKind", "PolicyRecord", "PolicyReport", "PolicyStage", "PretrainingOptions",
    "PretrainingParams", "ProgressOut", "ReplicateSummary", "ScanScore", "ScorePhase",
    "SegmentationOptions", "SegmentationParams", "SpacingMm", "parse_params",
]

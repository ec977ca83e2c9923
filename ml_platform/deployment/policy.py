"""The rollout policy: traffic steps with pauses, analysis, thresholds and limits.

Defaults live here; a dataset spec may override any of them in an optional
``rollout:`` section (the spec keeps it as a mapping; this module validates it),
and a run may override them again through the asset's run config::

    rollout:
      steps: [10, 25, 50]          # canary traffic weight (%) of each step
      step_pause_seconds: 60       # minimum time on each step
      analysis_interval_seconds: 10
      window_seconds: 60           # sliding window for error rate and latency
      min_live_accuracy: 0.70      # from /feedback, cumulative since the canary took traffic
      min_feedback_samples: 20
      max_error_rate: 0.01         # 5xx share of /predict
      max_p95_latency_ms: 500
      min_requests: 20             # per window, for error rate and latency to count
      failure_limit: 2             # failed analyses before a rollback
      inconclusive_limit: 6        # held analyses past a step's pause before a rollback
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ml_platform.spec import DatasetSpec


class PolicyError(ValueError):
    """A rollout policy value is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class RolloutPolicy:
    """How a canary is rolled out and judged."""

    steps: tuple[int, ...] = (10, 25, 50)
    step_pause_seconds: float = 60.0
    analysis_interval_seconds: float = 10.0
    window_seconds: float = 60.0
    min_live_accuracy: float = 0.70
    min_feedback_samples: int = 20
    max_error_rate: float = 0.01
    max_p95_latency_ms: float = 500.0
    min_requests: int = 20
    failure_limit: int = 2
    inconclusive_limit: int = 6
    smoke_rows: int = 5
    startup_timeout_seconds: float = 300.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        steps = tuple(int(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps:
            raise PolicyError("rollout.steps: at least one traffic step is needed")
        if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise PolicyError(f"rollout.steps must be increasing percentages in (0, 100], got {list(steps)}")
        for name in ("step_pause_seconds", "analysis_interval_seconds", "window_seconds"):
            if not getattr(self, name) > 0:
                raise PolicyError(f"rollout.{name} must be > 0")
        if self.analysis_interval_seconds > self.step_pause_seconds:
            raise PolicyError("rollout.analysis_interval_seconds must not exceed step_pause_seconds")
        if not 0 <= self.min_live_accuracy <= 1 or not 0 <= self.max_error_rate <= 1:
            raise PolicyError("rollout.min_live_accuracy and max_error_rate are ratios in [0, 1]")
        for name in ("failure_limit", "inconclusive_limit", "min_requests", "min_feedback_samples", "smoke_rows"):
            if int(getattr(self, name)) < 1:
                raise PolicyError(f"rollout.{name} must be >= 1")

    @property
    def total_pause_seconds(self) -> float:
        """The time the policy itself asks for: every step's pause."""
        return self.step_pause_seconds * len(self.steps)

    def with_overrides(self, overrides: Mapping[str, Any]) -> RolloutPolicy:
        """A copy with the non-None values of ``overrides`` applied (unknown keys are an error)."""
        known = {f.name for f in dataclasses.fields(self) if f.name != "extra"}
        unknown = sorted(k for k, v in overrides.items() if v is not None and k not in known)
        if unknown:
            raise PolicyError(f"unknown rollout settings {unknown}; known: {sorted(known)}")
        changes: dict[str, Any] = {k: (tuple(v) if k == "steps" else v) for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("extra")
        data["steps"] = list(self.steps)
        return data

    def markdown(self) -> str:
        """The policy as a two-column markdown table (for asset metadata)."""
        rows = ["| setting | value |", "|---|---|"]
        rows += [f"| {k} | {v} |" for k, v in self.as_dict().items()]
        return "\n".join(rows)


def spec_rollout_section(spec: DatasetSpec) -> dict[str, Any]:
    """The spec's ``rollout:`` mapping ({} when absent)."""
    return dict(spec.rollout)


def load_policy(spec: DatasetSpec, overrides: Mapping[str, Any] | None = None) -> RolloutPolicy:
    """Code defaults, then the spec's ``rollout:`` section, then ``overrides`` (e.g. run config)."""
    policy = RolloutPolicy().with_overrides(spec_rollout_section(spec))
    return policy.with_overrides(overrides or {})

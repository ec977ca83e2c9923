"""The rollout policy, as data: traffic steps with pauses, metrics each with its own limit, limits, deadline, webhooks.

Defaults live here; a dataset spec may override any of them in an optional
``rollout:`` section (the spec keeps it as a mapping; this module validates it),
and a run may override them again through the asset's run config::

    rollout:
      steps: [10, 25, 50]          # canary traffic weight (%) of each step
      step_pause_seconds: 60       # minimum time on each step
      analysis_interval_seconds: 10
      window_seconds: 60           # sliding window for error rate and latency
      failure_limit: 2             # failed analyses before a rollback
      inconclusive_limit: 6        # held analyses past a step's pause before a rollback
      error_limit: 3               # consecutive measurement errors (metric source unreachable) before a rollback
      progress_deadline_seconds: 1800   # no decision by then: rolled back
      max_attempts: 3              # runs that may drive one rollout (a run died: the next one resumes)
      replicas: 2                  # serving replicas per track (deployer; default ML_PLATFORM_REPLICAS)
      metrics:                     # each with its own limit (omit: the four flat thresholds below)
        - {metric: error_rate, max: 0.01, min_samples: 20}
        - {metric: latency, quantile: 0.99, max_ms: 800, min_samples: 20}
        - {metric: live_accuracy, min: 0.70, min_samples: 20}
        - {metric: live_accuracy_vs_stable, max_drop: 0.05, min_samples: 30}
      webhooks:                    # HTTP POST with a JSON body; a non-2xx answer (or none) refuses
        pre_rollout: {url: "https://ci.example/approve", timeout_seconds: 10}
        confirm_promotion: {url: "https://ci.example/confirm"}

Without ``metrics:``, the flat thresholds (``max_error_rate``, ``max_p95_latency_ms``,
``min_live_accuracy``, ``min_requests``, ``min_feedback_samples``) make the default list
(error rate, p95 latency, live accuracy); a policy sets one form or the other, not both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ml_platform.spec import DatasetSpec

METRIC_KINDS = ("error_rate", "latency", "live_accuracy", "live_accuracy_vs_stable")
FLAT_THRESHOLDS = ("max_error_rate", "max_p95_latency_ms", "min_live_accuracy", "min_requests", "min_feedback_samples")
WEBHOOK_HOOKS = ("pre_rollout", "confirm_promotion")
DEFAULT_PROGRESS_DEADLINE_SECONDS = 1800.0


class PolicyError(ValueError):
    """A rollout policy value is missing, malformed or inconsistent."""


def _number(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{where}.{key} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class MetricCheck:
    """One metric of the analysis and its limit.

    ``error_rate``: share of 5xx ``/predict`` answers, ``max`` (ratio). ``latency``: the ``quantile``
    (0.5-0.999) of ``/predict`` latency, ``max_ms``. ``live_accuracy``: share of correct feedback
    since the canary took traffic, ``min`` (ratio). ``live_accuracy_vs_stable``: the canary's live
    accuracy may be at most ``max_drop`` below stable's over the same period. ``min_samples``:
    requests (error rate, latency) or feedback (accuracy, on each track) needed to judge; fewer is
    inconclusive.
    """

    metric: str
    max: float | None = None
    min: float | None = None
    max_ms: float | None = None
    quantile: float = 0.95
    max_drop: float | None = None
    min_samples: int = 20
    name: str = ""

    def __post_init__(self) -> None:
        where = f"rollout.metrics[{self.metric}]"
        if self.metric not in METRIC_KINDS:
            raise PolicyError(f"rollout.metrics: unknown metric {self.metric!r}; known: {list(METRIC_KINDS)}")
        needed = {
            "error_rate": "max",
            "latency": "max_ms",
            "live_accuracy": "min",
            "live_accuracy_vs_stable": "max_drop",
        }
        limit = getattr(self, needed[self.metric])
        if limit is None:
            raise PolicyError(f"{where}: `{needed[self.metric]}` is required")
        if self.metric in ("error_rate", "live_accuracy", "live_accuracy_vs_stable") and not 0 <= limit <= 1:
            raise PolicyError(f"{where}.{needed[self.metric]} is a ratio in [0, 1], got {limit}")
        if self.metric == "latency" and (not limit > 0 or not 0.5 <= self.quantile < 1):
            raise PolicyError(f"{where}: max_ms must be > 0 and quantile in [0.5, 1), got {limit}, {self.quantile}")
        if int(self.min_samples) < 1:
            raise PolicyError(f"{where}.min_samples must be >= 1")
        if not self.name:
            default = f"p{round(self.quantile * 100):g}_latency" if self.metric == "latency" else self.metric
            object.__setattr__(self, "name", default)

    @classmethod
    def parse(cls, raw: Any) -> MetricCheck:
        if isinstance(raw, MetricCheck):
            return raw
        if not isinstance(raw, Mapping) or "metric" not in raw:
            raise PolicyError(f"rollout.metrics: each entry is a mapping with a `metric` key, got {raw!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise PolicyError(f"rollout.metrics[{raw['metric']}]: unknown keys {unknown}; known: {sorted(known)}")
        where = f"rollout.metrics[{raw['metric']}]"
        numbers = {k: _number(raw, k, where) for k in ("max", "min", "max_ms", "max_drop", "quantile")}
        return cls(
            metric=str(raw["metric"]),
            **{k: v for k, v in numbers.items() if v is not None},
            min_samples=int(_number(raw, "min_samples", where) or 20),
            name=str(raw.get("name") or ""),
        )

    @property
    def threshold(self) -> str:
        if self.metric == "error_rate":
            return f"<= {self.max:.3f}"
        if self.metric == "latency":
            return f"<= {self.max_ms:.0f} ms"
        if self.metric == "live_accuracy":
            return f">= {self.min:.2f}"
        return f">= stable - {self.max_drop:.2f}"

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if self.metric != "latency":
            data.pop("quantile")
        return data


@dataclass(frozen=True)
class Webhook:
    """An HTTP POST the rollout makes (JSON body); a 2xx answer allows, anything else refuses."""

    url: str
    timeout_seconds: float = 10.0
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, hook: str, raw: Any) -> Webhook:
        if isinstance(raw, Webhook):
            return raw
        if isinstance(raw, str):
            raw = {"url": raw}
        if not isinstance(raw, Mapping) or not isinstance(raw.get("url"), str):
            raise PolicyError(f"rollout.webhooks.{hook}: a mapping with a `url`, got {raw!r}")
        url = raw["url"]
        if not url.startswith(("http://", "https://")):
            raise PolicyError(f"rollout.webhooks.{hook}.url must be http(s), got {url!r}")
        unknown = sorted(set(raw) - {"url", "timeout_seconds", "headers"})
        if unknown:
            raise PolicyError(f"rollout.webhooks.{hook}: unknown keys {unknown}")
        timeout = _number(raw, "timeout_seconds", f"rollout.webhooks.{hook}") or 10.0
        headers = raw.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise PolicyError(f"rollout.webhooks.{hook}.headers must be a mapping")
        return cls(url, timeout, tuple((str(k), str(v)) for k, v in headers.items()))


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
    error_limit: int = 3
    progress_deadline_seconds: float | None = None
    max_attempts: int = 3
    metrics: tuple[MetricCheck, ...] = ()
    webhooks: tuple[tuple[str, Webhook], ...] = ()
    replicas: int | None = None  # serving replicas per track (read by the deployer; None: ML_PLATFORM_REPLICAS)
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
        for name in (
            "failure_limit",
            "inconclusive_limit",
            "min_requests",
            "min_feedback_samples",
            "smoke_rows",
            "error_limit",
            "max_attempts",
        ):
            if int(getattr(self, name)) < 1:
                raise PolicyError(f"rollout.{name} must be >= 1")
        if self.replicas is not None and (isinstance(self.replicas, bool) or int(self.replicas) < 1):
            raise PolicyError(f"rollout.replicas must be >= 1, got {self.replicas!r}")
        metrics = self.metrics
        if not isinstance(metrics, list | tuple):
            raise PolicyError("rollout.metrics must be a list of metric checks")
        object.__setattr__(self, "metrics", tuple(MetricCheck.parse(m) for m in metrics))
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise PolicyError(f"rollout.metrics: names must be unique (set `name:`), got {names}")
        hooks = dict(self.webhooks)
        unknown = sorted(set(hooks) - set(WEBHOOK_HOOKS))
        if unknown:
            raise PolicyError(f"rollout.webhooks: unknown hooks {unknown}; known: {list(WEBHOOK_HOOKS)}")
        object.__setattr__(self, "webhooks", tuple((k, Webhook.parse(k, v)) for k, v in sorted(hooks.items())))
        deadline = self.progress_deadline_seconds
        if deadline is not None and deadline <= self.total_pause_seconds:
            raise PolicyError(
                f"rollout.progress_deadline_seconds ({deadline:g}) must exceed the policy's pauses "
                f"({self.total_pause_seconds:g} s)"
            )

    @property
    def metric_checks(self) -> tuple[MetricCheck, ...]:
        """The metrics judged by every analysis: ``metrics`` or, when unset, those of the flat thresholds."""
        if self.metrics:
            return self.metrics
        return (
            MetricCheck("error_rate", max=self.max_error_rate, min_samples=self.min_requests),
            MetricCheck("latency", max_ms=self.max_p95_latency_ms, quantile=0.95, min_samples=self.min_requests),
            MetricCheck("live_accuracy", min=self.min_live_accuracy, min_samples=self.min_feedback_samples),
        )

    @property
    def deadline_seconds(self) -> float:
        """Seconds from the rollout's start to its decision at the latest (the progress deadline)."""
        if self.progress_deadline_seconds is not None:
            return float(self.progress_deadline_seconds)
        return max(DEFAULT_PROGRESS_DEADLINE_SECONDS, 2 * self.total_pause_seconds + 2 * self.startup_timeout_seconds)

    def webhook(self, hook: str) -> Webhook | None:
        return dict(self.webhooks).get(hook)

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
        metrics = changes.get("metrics", self.metrics)
        flat = sorted(k for k in changes if k in FLAT_THRESHOLDS)
        if metrics and flat:
            raise PolicyError(
                f"rollout: {flat} are the thresholds of the default metrics; this policy lists `metrics:`, "
                "set the limits there"
            )
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["steps"] = list(self.steps)
        data["metrics"] = [m.as_dict() for m in self.metric_checks]
        data["webhooks"] = {k: w.url for k, w in self.webhooks}
        data["progress_deadline_seconds"] = self.deadline_seconds
        if self.metrics:
            for key in FLAT_THRESHOLDS:
                data.pop(key)
        return data

    def markdown(self) -> str:
        """The policy as a two-column markdown table (for asset metadata)."""
        rows = ["| setting | value |", "|---|---|"]
        data = self.as_dict()
        data.pop("metrics")
        rows += [f"| {k} | {v} |" for k, v in data.items()]
        rows += [f"| metric {m.name} | {m.threshold} (min {m.min_samples} samples) |" for m in self.metric_checks]
        return "\n".join(rows)


def spec_rollout_section(spec: DatasetSpec) -> dict[str, Any]:
    """The spec's ``rollout:`` mapping ({} when absent)."""
    return dict(spec.rollout)


def load_policy(spec: DatasetSpec, overrides: Mapping[str, Any] | None = None) -> RolloutPolicy:
    """Code defaults, then the spec's ``rollout:`` section, then ``overrides`` (e.g. run config)."""
    policy = RolloutPolicy().with_overrides(spec_rollout_section(spec))
    return policy.with_overrides(overrides or {})

"""One analysis of the canary: each metric against its threshold, and the verdict.

A metric *passes* or *fails* only with enough samples behind it; otherwise it
is *inconclusive*. The verdict of an analysis is ``fail`` when the canary is
unhealthy or any metric fails, ``pass`` when every metric passes, and
``inconclusive`` otherwise. Error rate and p95 latency are judged from every
view that has enough samples (the canary's own ``/metrics`` and, where the
deployer has one, the router's log), so a failure either view sees counts.
Errors and slow requests need no full sample to fail: when those already seen
would break the threshold within the first ``min_requests`` requests (more
than ``max_error_rate`` of them failed, or more than 5% of them were slower
than the latency threshold), waiting for more traffic cannot change that verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ml_platform.deployment.measurements import RouterWindow, TrackWindow
from ml_platform.deployment.policy import RolloutPolicy

Verdict = Literal["pass", "fail", "inconclusive"]
P95 = 0.95


@dataclass(frozen=True)
class MetricResult:
    """One metric of one analysis."""

    name: str
    observed: float | None
    threshold: str
    samples: float
    verdict: Verdict
    source: str

    def cell(self) -> str:
        if self.observed is None:
            return f"n/a ({self.samples:g} samples)"
        value = f"{self.observed * 1000:.0f} ms" if self.name == "p95_latency" else f"{self.observed:.3f}"
        return f"{value} ({self.samples:g}, {self.source})"


@dataclass(frozen=True)
class Analysis:
    """The measurements of one analysis tick and its verdict."""

    step: int
    weight: int
    at: float
    healthy: bool
    health_detail: str
    metrics: tuple[MetricResult, ...]
    stable_context: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def verdict(self) -> Verdict:
        if not self.healthy or any(m.verdict == "fail" for m in self.metrics):
            return "fail"
        if all(m.verdict == "pass" for m in self.metrics):
            return "pass"
        return "inconclusive"

    @property
    def reasons(self) -> list[str]:
        """Why the analysis did not pass (empty when it passed)."""
        out = [] if self.healthy else [f"canary unhealthy: {self.health_detail}"]
        for m in self.metrics:
            if m.verdict == "fail":
                out.append(f"{m.name} {m.cell()} breaks {m.threshold}")
            elif m.verdict == "inconclusive":
                out.append(f"{m.name}: not enough samples ({m.samples:g})")
        return out

    def metric(self, name: str) -> MetricResult | None:
        return next((m for m in self.metrics if m.name == name), None)


def _judge(ok: bool, enough: bool) -> Verdict:
    if not enough:
        return "inconclusive"
    return "pass" if ok else "fail"


def _error_rate(errors: float, requests: float, policy: RolloutPolicy, source: str, threshold: str) -> MetricResult:
    rate = errors / requests if requests > 0 else None
    if requests >= policy.min_requests and rate is not None:
        verdict: Verdict = "pass" if rate <= policy.max_error_rate else "fail"
    elif errors / policy.min_requests > policy.max_error_rate:
        verdict = "fail"  # already over the threshold with the minimum sample
    else:
        verdict = "inconclusive"
    return MetricResult("error_rate", rate, threshold, requests, verdict, source)


def _latency(
    p95: float | None, requests: float, slow: float, policy: RolloutPolicy, source: str, threshold: str
) -> MetricResult:
    if requests >= policy.min_requests and p95 is not None:
        verdict: Verdict = "pass" if p95 * 1000 <= policy.max_p95_latency_ms else "fail"
    elif slow > (1 - P95) * policy.min_requests:
        verdict = "fail"  # the p95 of the minimum sample is already over the threshold
    else:
        verdict = "inconclusive"
    return MetricResult("p95_latency", p95, threshold, requests, verdict, source)


def _combine(results: list[MetricResult], name: str, threshold: str) -> MetricResult:
    """Fold the views of one metric: any failing view fails it; else any passing view passes it."""
    for verdict in ("fail", "pass"):
        chosen = [r for r in results if r.verdict == verdict]
        if chosen:
            worst = max(chosen, key=lambda r: r.observed if r.observed is not None else -1.0)
            return worst
    best = max(results, key=lambda r: r.samples) if results else None
    return MetricResult(
        name, None, threshold, best.samples if best else 0, "inconclusive", best.source if best else "-"
    )


def evaluate(
    policy: RolloutPolicy,
    *,
    step: int,
    weight: int,
    at: float,
    healthy: bool,
    health_detail: str,
    window: TrackWindow | None,
    cumulative: TrackWindow | None,
    router: RouterWindow | None,
    stable_context: str = "",
) -> Analysis:
    """Judge the canary: ``window`` (sliding) for errors and latency, ``cumulative`` for accuracy."""
    error_threshold = f"<= {policy.max_error_rate:.3f}"
    latency_threshold = f"<= {policy.max_p95_latency_ms:.0f} ms"
    errors: list[MetricResult] = []
    latencies: list[MetricResult] = []
    limit = policy.max_p95_latency_ms / 1000
    if window is not None:
        errors.append(_error_rate(window.errors, window.requests, policy, "metrics", error_threshold))
        p95, slow = window.latency_quantile(P95), window.slower_than(limit)
        latencies.append(_latency(p95, window.requests, slow, policy, "metrics", latency_threshold))
    if router is not None:
        errors.append(_error_rate(router.errors, router.requests, policy, "router", error_threshold))
        slow = router.slower_than(limit)
        latencies.append(_latency(router.p95_seconds, router.requests, slow, policy, "router", latency_threshold))
    accuracy = cumulative.live_accuracy if cumulative is not None else None
    samples = cumulative.feedback if cumulative is not None else 0.0
    accuracy_result = MetricResult(
        "live_accuracy",
        accuracy,
        f">= {policy.min_live_accuracy:.2f}",
        samples,
        _judge(
            accuracy is not None and accuracy >= policy.min_live_accuracy,
            samples >= policy.min_feedback_samples and accuracy is not None,
        ),
        "metrics",
    )
    return Analysis(
        step=step,
        weight=weight,
        at=at,
        healthy=healthy,
        health_detail=health_detail,
        metrics=(
            _combine(errors, "error_rate", error_threshold),
            _combine(latencies, "p95_latency", latency_threshold),
            accuracy_result,
        ),
        stable_context=stable_context,
    )


def step_table(analyses: list[Analysis], started_at: float) -> str:
    """A markdown table of one step's analyses."""
    rows = [
        "| t (s) | weight | healthy | error rate | p95 latency | live accuracy | stable (context) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in analyses:
        cells = {m.name: m.cell() for m in a.metrics}
        health = "yes" if a.healthy else f"NO: {a.health_detail}"
        rows.append(
            f"| {a.at - started_at:.1f} | {a.weight}% | {health} | {cells.get('error_rate', '-')} | "
            f"{cells.get('p95_latency', '-')} | {cells.get('live_accuracy', '-')} | {a.stable_context or '-'} | "
            f"**{a.verdict}** |"
        )
    return "\n".join(rows)

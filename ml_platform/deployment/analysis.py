"""One analysis of the canary: each metric of the policy against its own limit, and the verdict.

A metric *passes* or *fails* only with enough samples behind it (its
``min_samples``); otherwise it is *inconclusive*. The verdict of an analysis is
``fail`` when the canary is unhealthy or any metric fails; ``error`` when the
measurements could not be taken (the metric source is unreachable: Argo's
Error phase, which says nothing about the canary and counts toward its own
``error_limit``, not toward ``failure_limit`` or ``inconclusive_limit``);
``pass`` when every metric passes; ``inconclusive`` otherwise. Error rate and p95 latency are judged from every
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

from ml_platform.deployment.measurements import RouterWindow, TrackWindow, exact_quantile
from ml_platform.deployment.policy import MetricCheck, RolloutPolicy

Verdict = Literal["pass", "fail", "inconclusive", "error"]


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
        latency = self.threshold.endswith(" ms")
        value = f"{self.observed * 1000:.0f} ms" if latency else f"{self.observed:.3f}"
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
    measurement_error: str = ""  # why the measurements could not be taken (Error phase)

    @property
    def verdict(self) -> Verdict:
        if not self.healthy or any(m.verdict == "fail" for m in self.metrics):
            return "fail"
        if self.measurement_error:
            return "error"
        if all(m.verdict == "pass" for m in self.metrics):
            return "pass"
        return "inconclusive"

    @property
    def reasons(self) -> list[str]:
        """Why the analysis did not pass (empty when it passed)."""
        out = [] if self.healthy else [f"canary unhealthy: {self.health_detail}"]
        if self.measurement_error:
            out.append(f"measurement error: {self.measurement_error}")
        for m in self.metrics:
            if m.verdict == "fail":
                out.append(f"{m.name} {m.cell()} breaks {m.threshold}")
            elif m.verdict == "inconclusive":
                out.append(f"{m.name}: not enough samples ({m.samples:g})")
        return out

    def metric(self, name: str) -> MetricResult | None:
        return next((m for m in self.metrics if m.name == name), None)

    def compact(self) -> dict[str, object]:
        """A small JSON-able summary (kept in the persisted rollout record)."""
        return {
            "step": self.step,
            "weight": self.weight,
            "at": round(self.at, 3),
            "verdict": self.verdict,
            "metrics": {m.name: [m.observed, m.samples, m.verdict] for m in self.metrics},
            "reasons": self.reasons[:5],
        }


def _judge(ok: bool, enough: bool) -> Verdict:
    if not enough:
        return "inconclusive"
    return "pass" if ok else "fail"


def _error_rate(errors: float, requests: float, check: MetricCheck, source: str) -> MetricResult:
    rate = errors / requests if requests > 0 else None
    limit = float(check.max or 0.0)
    if requests >= check.min_samples and rate is not None:
        verdict: Verdict = "pass" if rate <= limit else "fail"
    elif errors / check.min_samples > limit:
        verdict = "fail"  # already over the threshold with the minimum sample
    else:
        verdict = "inconclusive"
    return MetricResult(check.name, rate, check.threshold, requests, verdict, source)


def _latency(quantile: float | None, requests: float, slow: float, check: MetricCheck, source: str) -> MetricResult:
    if requests >= check.min_samples and quantile is not None:
        verdict: Verdict = "pass" if quantile * 1000 <= float(check.max_ms or 0.0) else "fail"
    elif slow > (1 - check.quantile) * check.min_samples:
        verdict = "fail"  # the quantile of the minimum sample is already over the threshold
    else:
        verdict = "inconclusive"
    return MetricResult(check.name, quantile, check.threshold, requests, verdict, source)


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


def _judge_metric(
    check: MetricCheck,
    window: TrackWindow | None,
    cumulative: TrackWindow | None,
    router: RouterWindow | None,
    stable_cumulative: TrackWindow | None,
) -> MetricResult:
    views: list[MetricResult] = []
    if check.metric == "error_rate":
        if window is not None:
            views.append(_error_rate(window.errors, window.requests, check, "metrics"))
        if router is not None:
            views.append(_error_rate(router.errors, router.requests, check, "router"))
        return _combine(views, check.name, check.threshold)
    if check.metric == "latency":
        limit = float(check.max_ms or 0.0) / 1000
        if window is not None:
            q, slow = window.latency_quantile(check.quantile), window.slower_than(limit)
            views.append(_latency(q, window.requests, slow, check, "metrics"))
        if router is not None:
            q = exact_quantile(check.quantile, list(router.timings)) if router.timings else None
            views.append(_latency(q, router.requests, router.slower_than(limit), check, "router"))
        return _combine(views, check.name, check.threshold)
    accuracy = cumulative.live_accuracy if cumulative is not None else None
    samples = cumulative.feedback if cumulative is not None else 0.0
    enough = samples >= check.min_samples and accuracy is not None
    if check.metric == "live_accuracy":
        ok = accuracy is not None and accuracy >= float(check.min or 0.0)
        return MetricResult(check.name, accuracy, check.threshold, samples, _judge(ok, enough), "metrics")
    stable = stable_cumulative.live_accuracy if stable_cumulative is not None else None
    stable_samples = stable_cumulative.feedback if stable_cumulative is not None else 0.0
    enough = enough and stable is not None and stable_samples >= check.min_samples
    ok = accuracy is not None and stable is not None and accuracy >= stable - float(check.max_drop or 0.0)
    threshold = check.threshold if stable is None else f">= {stable:.3f} - {check.max_drop:.2f} (stable)"
    return MetricResult(check.name, accuracy, threshold, min(samples, stable_samples), _judge(ok, enough), "metrics")


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
    stable_cumulative: TrackWindow | None = None,
    measurement_error: str = "",
) -> Analysis:
    """Judge the canary on every metric of the policy: ``window`` (sliding) for errors and latency,
    ``cumulative`` (since traffic) for accuracy, ``stable_cumulative`` for accuracy relative to stable.
    ``measurement_error`` says the measurements could not be taken (the analysis is an Error)."""
    results = tuple(
        _judge_metric(check, window, cumulative, router, stable_cumulative) for check in policy.metric_checks
    )
    return Analysis(
        step=step,
        weight=weight,
        at=at,
        healthy=healthy,
        health_detail=health_detail,
        metrics=results,
        stable_context=stable_context,
        measurement_error=measurement_error,
    )


def step_table(analyses: list[Analysis], started_at: float) -> str:
    """A markdown table of one step's analyses: one column per metric of the policy."""
    names: list[str] = []
    for a in analyses:
        names += [m.name for m in a.metrics if m.name not in names]
    header = " | ".join(n.replace("_", " ") for n in names)
    rows = [
        f"| t (s) | weight | healthy | {header} | stable (context) | verdict |",
        "|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for a in analyses:
        cells = {m.name: m.cell() for m in a.metrics}
        health = "yes" if a.healthy else f"NO: {a.health_detail}"
        values = " | ".join(cells.get(n, "-") for n in names)
        verdict = f"**{a.verdict}**" + (f" ({a.measurement_error})" if a.measurement_error else "")
        rows.append(
            f"| {a.at - started_at:.1f} | {a.weight}% | {health} | {values} | {a.stable_context or '-'} | {verdict} |"
        )
    return "\n".join(rows)

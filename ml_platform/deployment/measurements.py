"""Readings of the serving metrics and the arithmetic on them (windows, quantiles, ratios).

A :class:`TrackReading` holds *cumulative* counters of one track and model
version at one instant, whichever source produced it (a scrape of
``/metrics`` or PromQL over Prometheus). Analyses work on the difference of
two readings, so both sources are judged by the same arithmetic. A counter
that went down (the process restarted) counts from zero again; a scrape of
several replicas keeps each target's counters (``parts``), so one replica's
restart resets only its share of the sum.

:class:`RouterSample` lists what the router (the local nginx) saw of each
request it sent to the canary: its status and upstream time. The router sees
failures the canary cannot report about itself: refused connections, a crash,
a broken proxy in front of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PREDICT_ENDPOINT = "/predict"


@dataclass(frozen=True)
class TrackReading:
    """Cumulative serving counters of one track (and model version) at one instant."""

    at: float
    requests: float = 0.0
    errors: float = 0.0  # 5xx answers to /predict
    latency_buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count), +Inf last
    feedback_correct: float = 0.0
    feedback_incorrect: float = 0.0
    reachable: bool = True
    detail: str = ""
    # Per scrape target (its /metrics URL) when the reading sums several processes (replicas): a restart
    # then resets only that target's counters, and only that target counts from zero again.
    parts: tuple[tuple[str, TrackReading], ...] = ()

    @property
    def feedback(self) -> float:
        return self.feedback_correct + self.feedback_incorrect

    def minus(self, base: TrackReading | None) -> TrackWindow:
        """The activity between ``base`` and this reading."""
        if base is None:
            base = TrackReading(at=self.at)
        if self.parts and base.parts:
            base_parts = dict(base.parts)
            windows = [part.minus(base_parts.get(target, TrackReading(at=base.at))) for target, part in self.parts]
            return _sum_windows(windows, max(self.at - base.at, 0.0))

        def delta(now: float, then: float) -> float:
            return now if now < then else now - then  # a reset: the process restarted

        before = dict(base.latency_buckets)
        buckets = tuple((le, delta(count, before.get(le, 0.0))) for le, count in self.latency_buckets)
        return TrackWindow(
            seconds=max(self.at - base.at, 0.0),
            requests=delta(self.requests, base.requests),
            errors=delta(self.errors, base.errors),
            latency_buckets=buckets,
            feedback_correct=delta(self.feedback_correct, base.feedback_correct),
            feedback_incorrect=delta(self.feedback_incorrect, base.feedback_incorrect),
        )


@dataclass(frozen=True)
class TrackWindow:
    """Activity of one track over a window: counts, not rates."""

    seconds: float
    requests: float
    errors: float
    latency_buckets: tuple[tuple[float, float], ...]
    feedback_correct: float
    feedback_incorrect: float

    @property
    def feedback(self) -> float:
        return self.feedback_correct + self.feedback_incorrect

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def live_accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback if self.feedback > 0 else None

    def latency_quantile(self, q: float) -> float | None:
        """Seconds, from the histogram, interpolated like PromQL's ``histogram_quantile``."""
        return histogram_quantile(q, self.latency_buckets)

    def slower_than(self, seconds: float) -> float:
        """Requests certainly slower than ``seconds``: above the first bucket bound at or over it."""
        ordered = sorted(self.latency_buckets)
        if not ordered:
            return 0.0
        total = ordered[-1][1]
        bound = next(((le, count) for le, count in ordered if le >= seconds and not math.isinf(le)), None)
        return 0.0 if bound is None else max(total - bound[1], 0.0)


def _sum_windows(windows: list[TrackWindow], seconds: float) -> TrackWindow:
    """Several targets' windows over the same span, added up."""
    buckets: dict[float, float] = {}
    for window in windows:
        for le, count in window.latency_buckets:
            buckets[le] = buckets.get(le, 0.0) + count
    return TrackWindow(
        seconds=seconds,
        requests=sum(w.requests for w in windows),
        errors=sum(w.errors for w in windows),
        latency_buckets=tuple(sorted(buckets.items())),
        feedback_correct=sum(w.feedback_correct for w in windows),
        feedback_incorrect=sum(w.feedback_incorrect for w in windows),
    )


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """PromQL's ``histogram_quantile`` on cumulative ``(le, count)`` buckets (None without data).

    Linear interpolation inside the bucket holding the rank; the lowest bucket
    starts at 0; a rank in the +Inf bucket answers the highest finite bound.
    """
    ordered = sorted(buckets, key=lambda b: b[0])
    if not ordered or not math.isinf(ordered[-1][0]):
        return None
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for index, (bound, count) in enumerate(ordered):
        if count >= rank:
            if math.isinf(bound):
                return ordered[index - 1][0] if index > 0 else None
            if index == 0 and bound <= 0:
                return bound
            in_bucket = count - previous_count
            if in_bucket <= 0:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / in_bucket
        previous_bound, previous_count = bound, count
    return ordered[-2][0] if len(ordered) > 1 else None


def exact_quantile(q: float, values: Sequence[float]) -> float | None:
    """The nearest-rank quantile of raw values (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    index = max(math.ceil(q * len(ordered)) - 1, 0)
    return ordered[min(index, len(ordered) - 1)]


@dataclass(frozen=True)
class RouterAttempt:
    """One request the router sent to the canary."""

    at: float
    failed: bool  # 5xx answer or no answer (refused, reset, timeout)
    seconds: float | None


@dataclass
class RouterSample:
    """The canary as the router saw it: every attempt, newest last."""

    attempts: list[RouterAttempt] = field(default_factory=list)

    def extend(self, attempts: Iterable[RouterAttempt]) -> None:
        self.attempts.extend(attempts)

    def since(self, start: float) -> list[RouterAttempt]:
        return [a for a in self.attempts if a.at >= start]


@dataclass(frozen=True)
class RouterWindow:
    """Router-side error rate and latency of the canary over a window."""

    requests: int
    errors: int
    p95_seconds: float | None
    timings: tuple[float, ...] = ()

    @classmethod
    def of(cls, attempts: Sequence[RouterAttempt]) -> RouterWindow:
        timings = tuple(a.seconds for a in attempts if a.seconds is not None)
        return cls(len(attempts), sum(a.failed for a in attempts), exact_quantile(0.95, timings), timings)

    def slower_than(self, seconds: float) -> int:
        return sum(t > seconds for t in self.timings)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


class ReadingHistory:
    """Readings of one track over a rollout, for sliding windows."""

    def __init__(self) -> None:
        self.readings: list[TrackReading] = []

    def add(self, reading: TrackReading) -> None:
        if reading.reachable:
            self.readings.append(reading)

    @property
    def first(self) -> TrackReading | None:
        return self.readings[0] if self.readings else None

    def base_for(self, now: float, window_seconds: float, not_before: float) -> TrackReading | None:
        """The newest reading at least ``window_seconds`` old, but none older than ``not_before``."""
        candidates = [r for r in self.readings if r.at >= not_before]
        if not candidates:
            return None
        older = [r for r in candidates if r.at <= now - window_seconds]
        return older[-1] if older else candidates[0]


def now() -> float:
    return time.time()

"""A canary rollout from start to decision: smoke test, traffic steps, analysis, promote or roll back.

:class:`CanaryRollout` needs no Dagster: the ``canary_deployment`` asset runs
it with its resources, tests can run it directly. The flow (Argo Rollouts /
Flagger style):

1. The version must be validated; a newer waiting version or a newer champion
   supersedes it. With no champion yet it is deployed straight to stable and
   becomes ``champion`` (after a smoke test through the router).
2. Stable is checked (started if needed) on the champion; the canary starts
   with the version pinned and no traffic; health and a known prediction are
   smoke-tested through the router before any traffic.
3. Each step sets the canary's weight and lasts at least ``step_pause_seconds``,
   with an analysis every ``analysis_interval_seconds``. A failed analysis
   counts toward ``failure_limit`` (reached: roll back). Past the pause, a
   passing analysis moves on; one that does not pass holds the step, and
   ``inconclusive_limit`` held analyses roll back.
4. Promote: ``champion`` -> version (old champion -> ``previous_champion``),
   stable hot-swaps to it, the canary is retired. Roll back: the canary is
   retired, ``champion`` stays, the version is tagged ``rejected`` with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ml_platform.deployment.analysis import Analysis, evaluate, step_table
from ml_platform.deployment.backend import DeploymentBackend, DeploymentError
from ml_platform.deployment.measurements import ReadingHistory, RouterSample, RouterWindow, TrackReading
from ml_platform.deployment.metric_source import MetricSource
from ml_platform.deployment.policy import RolloutPolicy
from ml_platform.deployment.registry_ops import (
    DEPLOYMENT_STATUS_TAG,
    is_validated,
    iso,
    move_champion,
    restore_champion,
    set_tags,
    waiting_versions,
)
from ml_platform.deployment.smoke import SmokeResult, smoke_rows, smoke_test
from ml_platform.ml.registry import CHAMPION_ALIAS, PREVIOUS_CHAMPION_ALIAS, alias_version
from ml_platform.spec import DatasetSpec

PROMOTED, REJECTED, SUPERSEDED, ALREADY_CHAMPION = "promoted", "rejected", "superseded", "already_champion"


class RolloutError(RuntimeError):
    """The rollout cannot run at all (e.g. the version is not validated)."""


@dataclass
class StepRecord:
    """One traffic step and the analyses made during it."""

    index: int
    weight: int
    started_at: float
    analyses: list[Analysis] = field(default_factory=list)
    outcome: str = "running"
    ended_at: float | None = None

    def summary(self) -> str:
        last = self.analyses[-1] if self.analyses else None
        cells = " ".join(f"{m.name}={m.cell()}" for m in last.metrics) if last else ""
        return f"weight={self.weight}% outcome={self.outcome} analyses={len(self.analyses)} last: {cells}"


@dataclass
class RolloutResult:
    """What happened, with every measurement, for metadata and registry tags."""

    model_name: str
    version: str
    decision: str
    reason: str
    policy: RolloutPolicy
    champion_before: str | None = None
    champion_after: str | None = None
    smoke: SmokeResult | None = None
    steps: list[StepRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    first_deployment: bool = False

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    def durations(self) -> dict[str, float]:
        """Seconds between the recorded instants (only those both ends of which were recorded)."""
        t = self.timings
        spans = {
            "detection_seconds": ("validated_at", "requested_at"),
            "launch_seconds": ("requested_at", "started_at"),
            "stable_check_seconds": ("started_at", "stable_ready_at"),
            "canary_start_seconds": ("stable_ready_at", "canary_ready_at"),
            "smoke_test_seconds": ("canary_ready_at", "smoke_done_at"),
            "analysis_seconds": ("traffic_at", "decision_at"),
            "action_seconds": ("decision_at", "finished_at"),
            "run_seconds": ("started_at", "finished_at"),
        }
        out = {name: t[b] - t[a] for name, (a, b) in spans.items() if a in t and b in t}
        origin = t.get("validated_at", t.get("requested_at", t.get("started_at")))
        if origin is not None and "decision_at" in t:
            out["validated_to_decision_seconds"] = t["decision_at"] - origin
            if self.decision == PROMOTED and not self.first_deployment:
                pauses = self.policy.total_pause_seconds
                out["policy_pause_seconds"] = pauses
                out["decision_overhead_seconds"] = t["decision_at"] - origin - pauses
                if "traffic_at" in t:
                    out["analysis_overhead_seconds"] = t["decision_at"] - t["traffic_at"] - pauses
        return out

    def step_tables(self) -> dict[str, str]:
        origin = self.timings.get("traffic_at", 0.0)
        return {f"step_{s.index}_weight_{s.weight}": step_table(s.analyses, origin) for s in self.steps}


class CanaryRollout:
    """Runs one rollout of ``version`` against a backend, a metric source and the registry."""

    def __init__(
        self,
        *,
        spec: DatasetSpec,
        version: str,
        backend: DeploymentBackend,
        metric_source: MetricSource,
        client: Any,
        policy: RolloutPolicy,
        run_id: str = "",
        log: Callable[[str], None] = print,
        timings: dict[str, float] | None = None,
        lock_timeout: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.name = spec.model.name
        self.version = str(version)
        self.backend = backend
        self.metrics = metric_source
        self.client = client
        self.policy = policy
        self.run_id = run_id
        self.log = log
        self.lock_timeout = lock_timeout
        self.sleep = sleep
        self.result = RolloutResult(self.name, self.version, "running", "", policy)
        self.result.timings.update(timings or {})

    # -- helpers ----------------------------------------------------------------------------

    def _mark(self, name: str) -> float:
        now = time.time()
        self.result.timings[name] = now
        return now

    def _tag(self, tags: dict[str, Any]) -> None:
        set_tags(self.client, self.name, self.version, tags)

    def _finish(self, decision: str, reason: str) -> RolloutResult:
        self.result.decision, self.result.reason = decision, reason
        self._mark("finished_at")
        self.log(f"{self.name} v{self.version}: {decision}: {reason}")
        return self.result

    def _smoke(self, track: str) -> SmokeResult:
        mv = self.client.get_model_version(self.name, self.version)
        rows = smoke_rows(self.spec, (mv.tags or {}).get("reference_snapshot_uri"), self.policy.smoke_rows)
        smoke = smoke_test(self.backend.public_url, track, self.version, rows, list(self.spec.target.classes))
        self.result.smoke = smoke
        self._mark("smoke_done_at")
        self.log(f"smoke test of {track} v{self.version}: {'passed' if smoke.passed else 'FAILED'}: {smoke.detail}")
        return smoke

    # -- entry point ------------------------------------------------------------------------

    def run(self) -> RolloutResult:
        self._mark("started_at")
        model_version = self.client.get_model_version(self.name, self.version)
        if not is_validated(model_version):
            raise RolloutError(f"{self.name} v{self.version} has not passed the training gates (validation_status)")
        holder = f"canary rollout of {self.name} v{self.version} (Dagster run {self.run_id or '-'})"
        with self.backend.lock(self.lock_timeout, holder=holder, log=self.log):
            champion = alias_version(self.client, self.name, CHAMPION_ALIAS)
            self.result.champion_before = str(champion.version) if champion is not None else None
            superseded_by = self._superseded_by(champion)
            if superseded_by is not None:
                self._tag({DEPLOYMENT_STATUS_TAG: SUPERSEDED, "deployment.superseded_by": superseded_by})
                return self._finish(SUPERSEDED, f"version {superseded_by} is newer")
            if champion is not None and str(champion.version) == self.version:
                self.result.champion_after = self.version
                return self._finish(ALREADY_CHAMPION, "this version is already the champion")
            self._tag({DEPLOYMENT_STATUS_TAG: "in_progress", "deployment.dagster_run_id": self.run_id})
            try:
                if champion is None:
                    return self._first_deployment()
                return self._canary(str(champion.version))
            except BaseException as exc:  # an error, or the run was terminated: take the canary out first
                self._tag({DEPLOYMENT_STATUS_TAG: "failed", "deployment.reason": f"error: {exc!r}"[:500]})
                try:
                    self.backend.retire_canary()
                except Exception as cleanup:  # keep the original error
                    self.log(f"could not retire the canary after the error: {cleanup!r}")
                raise

    def _superseded_by(self, champion: Any) -> str | None:
        if champion is not None and int(champion.version) > int(self.version):
            return str(champion.version)
        newer = [v for v in waiting_versions(self.client, self.name) if int(v.version) > int(self.version)]
        return str(newer[-1].version) if newer else None

    # -- no champion yet: straight to stable ------------------------------------------------

    def _first_deployment(self) -> RolloutResult:
        self.result.first_deployment = True
        timeout = self.policy.startup_timeout_seconds
        move_champion(self.client, self.name, self.version)
        reason = ""
        try:
            self.backend.ensure_stable(self.version, timeout)
            self._mark("stable_ready_at")
            self._mark("canary_ready_at")
            smoke = self._smoke("stable")
            if not smoke.passed:
                reason = f"smoke test failed: {smoke.detail}"
        except DeploymentError as exc:
            reason = f"stable did not start: {exc}"
        self._mark("decision_at")
        if reason:
            restore_champion(self.client, self.name, None, None)
            try:
                self.backend.shutdown()
            except DeploymentError as exc:
                self.log(f"could not stop the failed first deployment: {exc}")
            self._tag({DEPLOYMENT_STATUS_TAG: REJECTED, "deployment.reason": reason, "deployment.decided_at": iso()})
            return self._finish(REJECTED, reason)
        self.result.champion_after = self.version
        reason = "no champion yet: deployed directly as stable"
        self._tag({DEPLOYMENT_STATUS_TAG: PROMOTED, "deployment.reason": reason, "deployment.decided_at": iso()})
        return self._finish(PROMOTED, reason)

    # -- canary -----------------------------------------------------------------------------

    def _canary(self, champion: str) -> RolloutResult:
        timeout = self.policy.startup_timeout_seconds
        self.backend.ensure_stable(champion, timeout)
        self._mark("stable_ready_at")
        try:
            self.backend.start_canary(self.version, timeout)
        except DeploymentError as exc:
            self._mark("canary_ready_at")
            return self._roll_back(f"canary did not start: {exc}")
        self._mark("canary_ready_at")
        healthy, detail = self.backend.canary_health()
        smoke = self._smoke("canary")
        if not healthy or not smoke.passed:
            return self._roll_back(f"smoke test failed: {detail if not healthy else smoke.detail}")
        return self._steps(champion)

    def _steps(self, champion: str) -> RolloutResult:
        policy = self.policy
        canary_history, stable_history = ReadingHistory(), ReadingHistory()
        router = self.backend.router_view()
        router_sample = RouterSample()
        canary_history.add(self._read("canary", self.version))
        stable_history.add(self._read("stable", champion))
        traffic_at = self._mark("traffic_at")
        failures = 0
        for index, weight in enumerate(policy.steps, start=1):
            self.backend.set_canary_weight(weight)
            step = StepRecord(index, weight, time.time())
            self.result.steps.append(step)
            self.log(f"step {index}: canary weight {weight}%")
            held = 0
            next_at = step.started_at + policy.analysis_interval_seconds
            while True:
                self.sleep(max(0.0, next_at - time.time()))
                next_at += policy.analysis_interval_seconds
                analysis = self._analyse(
                    index, weight, champion, canary_history, stable_history, router, router_sample, traffic_at
                )
                step.analyses.append(analysis)
                self.log(f"step {index} ({weight}%): {analysis.verdict} {'; '.join(analysis.reasons)}")
                if analysis.verdict == "fail":
                    failures += 1
                    if failures >= policy.failure_limit:
                        step.outcome, step.ended_at = "failed", time.time()
                        return self._roll_back(
                            f"{failures} failed analyses (limit {policy.failure_limit}): {'; '.join(analysis.reasons)}"
                        )
                if time.time() - step.started_at + 1e-6 < policy.step_pause_seconds:
                    continue
                if analysis.verdict == "pass":
                    step.outcome, step.ended_at = "passed", time.time()
                    break
                held += 1
                if held >= policy.inconclusive_limit:
                    step.outcome, step.ended_at = "inconclusive", time.time()
                    return self._roll_back(
                        f"step {index} held {held} analyses past its pause without passing: "
                        f"{'; '.join(analysis.reasons)}"
                    )
        return self._promote(champion)

    def _read(self, track: str, version: str) -> TrackReading:
        return self.metrics.read(track, version, self.backend.metrics_targets(track), self.backend.model or None)

    def _analyse(
        self,
        index: int,
        weight: int,
        champion: str,
        canary_history: ReadingHistory,
        stable_history: ReadingHistory,
        router: Any,
        router_sample: RouterSample,
        traffic_at: float,
    ) -> Analysis:
        policy = self.policy
        healthy, detail = self.backend.canary_health()
        reading = self._read("canary", self.version)
        canary_history.add(reading)
        window = cumulative = None
        if reading.reachable:
            base = canary_history.base_for(reading.at, policy.window_seconds, traffic_at - 60.0)
            window, cumulative = reading.minus(base), reading.minus(canary_history.first)
        router_window = None
        if router is not None:
            router_sample.extend(router.read_new())
            router_window = RouterWindow.of(router_sample.since(max(reading.at - policy.window_seconds, traffic_at)))
        stable = self._read("stable", champion)
        stable_history.add(stable)
        context = ""
        if stable.reachable:
            sw = stable.minus(stable_history.base_for(stable.at, policy.window_seconds, traffic_at - 60.0))
            p95 = sw.latency_quantile(0.95)
            rate, accuracy = sw.error_rate, stable.minus(stable_history.first).live_accuracy
            context = (
                f"{sw.requests:g} req, err {'-' if rate is None else f'{rate:.3f}'}, "
                f"p95 {'-' if p95 is None else f'{p95 * 1000:.0f} ms'}, "
                f"acc {'-' if accuracy is None else f'{accuracy:.2f}'}"
            )
        return evaluate(
            policy,
            step=index,
            weight=weight,
            at=time.time(),
            healthy=healthy,
            health_detail=detail if healthy else (detail or reading.detail),
            window=window,
            cumulative=cumulative,
            router=router_window,
            stable_context=context,
        )

    # -- outcomes ---------------------------------------------------------------------------

    def _step_tags(self) -> dict[str, str]:
        return {f"deployment.step_{s.index}": s.summary() for s in self.result.steps}

    def _promote(self, champion: str) -> RolloutResult:
        self._mark("decision_at")
        previous = alias_version(self.client, self.name, PREVIOUS_CHAMPION_ALIAS)
        previous_version = str(previous.version) if previous is not None else None
        move_champion(self.client, self.name, self.version)
        try:
            self.backend.serve_on_stable(self.version, self.policy.startup_timeout_seconds)
        except DeploymentError as exc:
            restore_champion(self.client, self.name, champion, previous_version)
            return self._roll_back(f"promotion failed, champion restored: {exc}")
        self.backend.retire_canary()
        self.result.champion_after = self.version
        reason = f"every step passed ({len(self.result.steps)} steps); champion v{champion} -> v{self.version}"
        overhead = self.result.durations()
        self._tag(
            {
                DEPLOYMENT_STATUS_TAG: PROMOTED,
                "deployment.reason": reason,
                "deployment.decided_at": iso(self.result.timings["decision_at"]),
                "deployment.previous_champion": champion,
                **self._step_tags(),
                **(
                    {"deployment.decision_overhead_seconds": f"{overhead['decision_overhead_seconds']:.2f}"}
                    if "decision_overhead_seconds" in overhead
                    else {}
                ),
            }
        )
        set_tags(self.client, self.name, champion, {"deployment.replaced_by": self.version})
        return self._finish(PROMOTED, reason)

    def _roll_back(self, reason: str) -> RolloutResult:
        if "decision_at" not in self.result.timings:
            self._mark("decision_at")
        self.backend.retire_canary()
        champion = alias_version(self.client, self.name, CHAMPION_ALIAS)
        self.result.champion_after = str(champion.version) if champion is not None else None
        self._tag(
            {
                DEPLOYMENT_STATUS_TAG: REJECTED,
                "deployment.reason": reason,
                "deployment.decided_at": iso(self.result.timings["decision_at"]),
                **self._step_tags(),
            }
        )
        return self._finish(REJECTED, reason)

"""The rollout's decisions with scripted metrics: no processes, an in-memory registry, a recording backend.

The end-to-end module runs the same code against real processes; here each
branch of the state machine is driven on purpose: promotion, failure limit,
held-too-long, a promotion that fails half-way, supersession, an error.
"""

from __future__ import annotations

import math
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ml_platform.deployment import rollout as rollout_module
from ml_platform.deployment.backend import DeploymentError
from ml_platform.deployment.measurements import TrackReading
from ml_platform.deployment.policy import RolloutPolicy
from ml_platform.deployment.rollout import CanaryRollout
from ml_platform.deployment.rollout_state import FileRolloutStateStore
from ml_platform.deployment.smoke import SmokeResult
from ml_platform.spec import load_spec

POLICY = RolloutPolicy(
    steps=(10, 50),
    step_pause_seconds=0.05,
    analysis_interval_seconds=0.01,
    window_seconds=60,
    min_requests=10,
    min_feedback_samples=10,
    failure_limit=2,
    inconclusive_limit=3,
)


@dataclass
class Version:
    version: str
    tags: dict[str, str] = field(default_factory=dict)
    name: str = "iris-random-forest"
    run_id: str = ""


class Registry:
    """The MlflowClient methods the rollout uses, in memory."""

    def __init__(self, *versions: Version, champion: str | None = None) -> None:
        self.versions = {v.version: v for v in versions}
        self.aliases: dict[str, str] = {"champion": champion} if champion else {}

    def get_model_version(self, name: str, version: str) -> Version:
        return self.versions[str(version)]

    def search_model_versions(self, query: str) -> list[Version]:
        return list(self.versions.values())

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.versions[str(version)].tags[key] = value

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[alias] = str(version)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self.aliases.pop(alias, None)

    def get_model_version_by_alias(self, name: str, alias: str) -> Version:
        from mlflow.exceptions import MlflowException

        if alias not in self.aliases:
            raise MlflowException(f"alias {alias} not found")
        return self.versions[self.aliases[alias]]


class Backend:
    """Records the steps it is asked to do."""

    kind, model, model_name, public_url = "fake", "iris", "iris-random-forest", "http://fake"

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_on = fail_on

    def _do(self, name: str, arg: Any = None) -> None:
        self.calls.append((name, arg))
        if name == self.fail_on:
            raise DeploymentError(f"{name} broke")

    @contextmanager
    def lock(self, timeout: float = 0.0, **holder: object):  # type: ignore[no-untyped-def]
        yield

    def ensure_stable(self, version: str, timeout: float) -> None:
        self._do("ensure_stable", version)

    def start_canary(self, version: str, timeout: float) -> None:
        self._do("start_canary", version)

    def canary_health(self) -> tuple[bool, str]:
        return True, "ok"

    def set_canary_weight(self, weight: int) -> None:
        self._do("weight", weight)

    def serve_on_stable(self, version: str, timeout: float) -> None:
        self._do("serve_on_stable", version)

    def retire_canary(self) -> None:
        self._do("retire_canary")

    def metrics_targets(self, track: str) -> list[str]:
        return []

    def router_view(self) -> None:
        return None

    def shutdown(self) -> None:
        self._do("shutdown")


class Metrics:
    """Canary counters that grow by ``per_read`` requests (and feedback) per reading."""

    def __init__(self, per_read: int, error_share: float = 0.0, correct_share: float = 1.0) -> None:
        self.per_read, self.error_share, self.correct_share = per_read, error_share, correct_share
        self.reads = 0

    def read(self, track: str, version: str | None, targets: list[str], model: str | None = None) -> TrackReading:
        assert model == "iris"  # the rollout reads its own model's series only
        self.reads += 1
        n = float(self.per_read * self.reads)
        return TrackReading(
            at=float(self.reads),
            requests=n,
            errors=n * self.error_share,
            latency_buckets=((0.05, n), (math.inf, n)),
            feedback_correct=n * self.correct_share,
            feedback_incorrect=n * (1 - self.correct_share),
        )


@pytest.fixture(autouse=True)
def passing_smoke_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout_module, "smoke_test", lambda *a, **k: SmokeResult(True, "stubbed", 0.0, 5))


def run(registry: Registry, backend: Backend, metrics: Metrics, version: str = "2") -> Any:
    return CanaryRollout(
        spec=load_spec("iris"),
        version=version,
        backend=backend,  # type: ignore[arg-type]
        metric_source=metrics,  # type: ignore[arg-type]
        client=registry,
        policy=POLICY,
        log=lambda message: None,
        state_store=FileRolloutStateStore(Path(tempfile.mkdtemp(prefix="rollout-state-"))),
    ).run()


def validated(version: str, **tags: str) -> Version:
    return Version(version, {"validation_status": "passed", **tags})


def test_every_step_passing_promotes_and_moves_the_aliases() -> None:
    registry = Registry(validated("1"), validated("2"), champion="1")
    backend = Backend()
    result = run(registry, backend, Metrics(per_read=20))
    assert result.decision == "promoted", result.reason
    assert [c for c in backend.calls] == [
        ("ensure_stable", "1"),
        ("start_canary", "2"),
        ("weight", 10),
        ("weight", 50),
        ("serve_on_stable", "2"),
        ("retire_canary", None),
    ]
    assert registry.aliases == {"champion": "2", "previous_champion": "1"}
    tags = registry.versions["2"].tags
    assert tags["deployment_status"] == "promoted"
    assert "outcome=passed" in tags["deployment.step_1"] and "outcome=passed" in tags["deployment.step_2"]
    assert registry.versions["1"].tags["deployment.replaced_by"] == "2"
    durations = result.durations()
    assert durations["decision_overhead_seconds"] == pytest.approx(
        durations["validated_to_decision_seconds"] - POLICY.total_pause_seconds
    )


def test_failed_analyses_up_to_the_limit_roll_back() -> None:
    registry = Registry(validated("1"), validated("2"), champion="1")
    backend = Backend()
    result = run(registry, backend, Metrics(per_read=20, error_share=0.2))
    assert result.decision == "rejected"
    assert "2 failed analyses" in result.reason and "error_rate" in result.reason
    assert ("weight", 50) not in backend.calls and backend.calls[-1] == ("retire_canary", None)
    assert registry.aliases == {"champion": "1"}
    assert registry.versions["2"].tags["deployment_status"] == "rejected"


def test_a_step_that_never_gets_enough_samples_is_held_then_rolled_back() -> None:
    registry = Registry(validated("1"), validated("2"), champion="1")
    result = run(registry, Backend(), Metrics(per_read=0))
    assert result.decision == "rejected"
    assert "held 3 analyses past its pause" in result.reason
    assert result.steps[0].outcome == "inconclusive"


def test_a_promotion_that_fails_half_way_restores_the_champion() -> None:
    registry = Registry(validated("0"), validated("1"), validated("2"), champion="1")
    registry.aliases["previous_champion"] = "0"
    backend = Backend(fail_on="serve_on_stable")
    result = run(registry, backend, Metrics(per_read=20))
    assert result.decision == "rejected" and "promotion failed" in result.reason
    assert registry.aliases == {"champion": "1", "previous_champion": "0"}
    assert backend.calls[-1] == ("retire_canary", None)


def test_a_newer_waiting_version_supersedes_this_one() -> None:
    registry = Registry(validated("1"), validated("2"), validated("3"), champion="1")
    backend = Backend()
    result = run(registry, backend, Metrics(per_read=20), version="2")
    assert result.decision == "superseded" and backend.calls == []
    assert registry.versions["2"].tags["deployment.superseded_by"] == "3"


def test_no_champion_deploys_straight_to_stable() -> None:
    registry = Registry(validated("1"))
    backend = Backend()
    result = run(registry, backend, Metrics(per_read=0), version="1")
    assert result.decision == "promoted" and result.first_deployment
    assert backend.calls == [("ensure_stable", "1")]
    assert registry.aliases == {"champion": "1"}


def test_an_error_takes_the_canary_out_and_is_recorded() -> None:
    registry = Registry(validated("1"), validated("2"), champion="1")
    backend = Backend(fail_on="weight")
    with pytest.raises(DeploymentError, match="weight broke"):
        run(registry, backend, Metrics(per_read=20))
    assert backend.calls[-1] == ("retire_canary", None)
    assert registry.versions["2"].tags["deployment_status"] == "failed"
    assert registry.aliases == {"champion": "1"}


def test_an_unvalidated_version_is_refused() -> None:
    registry = Registry(validated("1"), Version("2", {"validation_status": "pending"}), champion="1")
    with pytest.raises(rollout_module.RolloutError, match="has not passed the training gates"):
        run(registry, Backend(), Metrics(per_read=20))


# -- crash safety: the record a dead run left is carried on by the next run ------------------


def run_with(registry: Registry, backend: Backend, metrics: Metrics, store: Any, policy: Any = POLICY) -> Any:
    return CanaryRollout(
        spec=load_spec("iris"),
        version="2",
        backend=backend,  # type: ignore[arg-type]
        metric_source=metrics,  # type: ignore[arg-type]
        client=registry,
        policy=policy,
        run_id="run-2",
        log=lambda message: None,
        state_store=store,
    ).run()


def left_by_a_dead_run(store: Any, phase: str, **fields: Any) -> None:
    from ml_platform.deployment.rollout_state import RolloutRecord

    record = RolloutRecord(model="iris", version="2", phase=phase, champion="1", weights=[10, 50], **fields)
    record.run_id, record.owner = "run-1", {"pid": 999999, "host": "h", "operation": "x", "since": 0.0}
    record.deadline = record.started_at + 3600
    store.save(record)


def test_the_record_follows_the_rollout_and_is_cleared_at_the_decision(tmp_path: Path) -> None:
    store = FileRolloutStateStore(tmp_path)
    seen: list[tuple[str, int]] = []

    class Watching(Backend):
        def set_canary_weight(self, weight: int) -> None:
            record = store.load("iris")
            seen.append((record.phase, record.step))
            super().set_canary_weight(weight)

        def serve_on_stable(self, version: str, timeout: float) -> None:
            seen.append((store.load("iris").phase, 0))
            super().serve_on_stable(version, timeout)

    registry = Registry(validated("1"), validated("2"), champion="1")
    result = run_with(registry, Watching(), Metrics(per_read=20), store)
    assert result.decision == "promoted"
    assert seen == [("progressing", 1), ("progressing", 2), ("promoting", 0)]
    assert store.load("iris") is None


def test_a_run_dead_mid_step_is_resumed_at_its_step_and_weight(tmp_path: Path) -> None:
    store = FileRolloutStateStore(tmp_path)
    left_by_a_dead_run(store, "progressing", step=2, weight=50, step_started_at=0.0, traffic_at=0.0, failures=1)
    registry = Registry(validated("1"), validated("2", deployment_status="in_progress"), champion="1")
    backend = Backend()
    result = run_with(registry, backend, Metrics(per_read=20), store)
    assert result.decision == "promoted" and result.resumed_from == "progressing" and result.attempts == 2
    # no new canary, no step 1 again: the weight of step 2 is set again (idempotent), then promotion
    assert backend.calls == [("weight", 50), ("serve_on_stable", "2"), ("retire_canary", None)]
    assert registry.aliases == {"champion": "2", "previous_champion": "1"}
    assert store.load("iris") is None


def test_a_run_dead_before_traffic_starts_over_from_a_clean_canary(tmp_path: Path) -> None:
    store = FileRolloutStateStore(tmp_path)
    left_by_a_dead_run(store, "pending")
    registry = Registry(validated("1"), validated("2", deployment_status="in_progress"), champion="1")
    backend = Backend()
    result = run_with(registry, backend, Metrics(per_read=20), store)
    assert result.decision == "promoted"
    assert backend.calls[:3] == [("retire_canary", None), ("ensure_stable", "1"), ("start_canary", "2")]


def test_a_run_dead_during_promotion_is_promoted_by_the_next(tmp_path: Path) -> None:
    store = FileRolloutStateStore(tmp_path)
    left_by_a_dead_run(store, "promoting", step=2, weight=50, decision="promoted")
    registry = Registry(validated("1"), validated("2", deployment_status="in_progress"), champion="2")
    registry.aliases["previous_champion"] = "1"  # the dead run had moved the alias already
    backend = Backend()
    result = run_with(registry, backend, Metrics(per_read=20), store)
    assert result.decision == "promoted"
    assert backend.calls == [("serve_on_stable", "2"), ("retire_canary", None)]
    assert registry.aliases == {"champion": "2", "previous_champion": "1"}
    assert registry.versions["2"].tags["deployment_status"] == "promoted"


def test_a_run_dead_while_rolling_back_is_rolled_back_and_the_champion_restored(tmp_path: Path) -> None:
    store = FileRolloutStateStore(tmp_path)
    left_by_a_dead_run(store, "rolling_back", decision="rejected", reason="2 failed analyses")
    registry = Registry(validated("1"), validated("2", deployment_status="in_progress"), champion="1")
    registry.aliases["challenger"] = "2"
    backend = Backend()
    result = run_with(registry, backend, Metrics(per_read=20), store)
    assert result.decision == "rejected" and result.reason == "2 failed analyses"
    assert backend.calls == [("retire_canary", None)]
    tags = registry.versions["2"].tags
    assert tags["deployment_status"] == "rejected" and tags["rejected_reason"] == "2 failed analyses"
    assert registry.aliases == {"champion": "1"}  # the rejected version lost `challenger`


def test_past_the_deadline_or_too_many_dead_runs_the_rollout_is_rolled_back(tmp_path: Path) -> None:
    store = FileRolloutStateStore(tmp_path)
    left_by_a_dead_run(store, "progressing", step=1, weight=10, step_started_at=0.0)
    record = store.load("iris")
    record.deadline = 1.0
    store.save(record)
    registry = Registry(validated("1"), validated("2"), champion="1")
    result = run_with(registry, Backend(), Metrics(per_read=20), store)
    assert result.decision == "rejected" and "progress deadline exceeded" in result.reason

    left_by_a_dead_run(store, "progressing", step=1, weight=10, step_started_at=0.0, attempts=POLICY.max_attempts)
    registry = Registry(validated("1"), validated("2"), champion="1")
    result = run_with(registry, Backend(), Metrics(per_read=20), store)
    assert result.decision == "rejected" and "runs died driving this rollout" in result.reason


class Unreachable(Metrics):
    def read(self, track: str, version: str | None, targets: list[str], model: str | None = None) -> TrackReading:
        return TrackReading(at=0.0, reachable=False, detail="Prometheus query failed: ConnectError")


def test_an_unreachable_metric_source_is_an_error_with_its_own_limit_not_a_failure(tmp_path: Path) -> None:
    registry = Registry(validated("1"), validated("2"), champion="1")
    policy = POLICY.with_overrides({"error_limit": 4})
    result = run_with(registry, Backend(), Unreachable(per_read=0), FileRolloutStateStore(tmp_path), policy)
    assert result.decision == "rejected"
    assert "4 measurement errors in a row (error_limit 4)" in result.reason and "ConnectError" in result.reason
    verdicts = [a.verdict for a in result.steps[0].analyses]
    assert verdicts == ["error"] * 4  # neither failures nor held analyses


def test_metrics_listed_in_the_policy_are_the_ones_judged(tmp_path: Path) -> None:
    registry = Registry(validated("1"), validated("2"), champion="1")
    policy = POLICY.with_overrides(
        {
            "metrics": [
                {"metric": "error_rate", "max": 0.05, "min_samples": 10},
                {"metric": "latency", "quantile": 0.99, "max_ms": 20, "min_samples": 10},
            ]
        }
    )
    result = run_with(registry, Backend(), Metrics(per_read=20), FileRolloutStateStore(tmp_path), policy)
    assert result.decision == "rejected"  # every request takes up to 50 ms: p99 > 20 ms
    assert "p99_latency" in result.reason
    assert [m.name for m in result.steps[0].analyses[0].metrics] == ["error_rate", "p99_latency"]


class HookServer:
    """A real HTTP server on 127.0.0.1 answering each hook with a chosen status; records the bodies."""

    def __init__(self, statuses: dict[str, int]) -> None:
        import http.server
        import json
        import threading

        received = self.received = []  # type: list[tuple[str, dict[str, Any]]]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook = self.path.strip("/")
                received.append((self.headers["X-ML-Platform-Hook"], body))
                self.send_response(statuses.get(hook, 200))
                self.end_headers()
                self.wfile.write(b"change freeze" if statuses.get(hook, 200) >= 300 else b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize("refusing", ["pre_rollout", "confirm_promotion", None])
def test_webhooks_are_asked_and_a_non_2xx_answer_refuses(tmp_path: Path, refusing: str | None) -> None:
    server = HookServer({refusing: 403} if refusing else {})
    try:
        policy = POLICY.with_overrides(
            {"webhooks": {hook: {"url": f"{server.url}/{hook}"} for hook in ("pre_rollout", "confirm_promotion")}}
        )
        registry = Registry(validated("1"), validated("2"), champion="1")
        registry.aliases["challenger"] = "2"
        backend = Backend()
        result = run_with(registry, backend, Metrics(per_read=20), FileRolloutStateStore(tmp_path), policy)
    finally:
        server.close()
    hooks = [hook for hook, _ in server.received]
    if refusing == "pre_rollout":
        assert result.decision == "refused" and "HTTP 403" in result.reason and "change freeze" in result.reason
        assert hooks == ["pre_rollout"] and backend.calls == []  # nothing deployed
    elif refusing == "confirm_promotion":
        assert result.decision == "refused" and hooks == ["pre_rollout", "confirm_promotion"]
        assert ("serve_on_stable", "2") not in backend.calls and backend.calls[-1] == ("retire_canary", None)
        assert registry.aliases["champion"] == "1"
        assert server.received[1][1]["steps"]  # the analyses went with the question
    else:
        assert result.decision == "promoted" and hooks == ["pre_rollout", "confirm_promotion"]
    assert server.received[0][1]["version"] == "2" and server.received[0][1]["champion"] == "1"
    assert registry.versions["2"].tags["deployment_status"] == result.decision
    assert registry.aliases.get("challenger") == "2"  # a refusal is not a verdict on the model


def test_an_unreachable_webhook_refuses(tmp_path: Path) -> None:
    from ml_platform.deployment.processes import free_port

    policy = POLICY.with_overrides({"webhooks": {"pre_rollout": f"http://127.0.0.1:{free_port()}/hook"}})
    registry = Registry(validated("1"), validated("2"), champion="1")
    result = run_with(registry, Backend(), Metrics(per_read=20), FileRolloutStateStore(tmp_path), policy)
    assert result.decision == "refused" and "unreachable" in result.reason


def test_the_history_keeps_the_analyses_of_the_dead_run(tmp_path: Path) -> None:
    store = FileRolloutStateStore(tmp_path)
    dead = {"step": 1, "weight": 10, "at": 1.0, "verdict": "fail", "metrics": {"error_rate": [0.5, 20, "fail"]}}
    left_by_a_dead_run(store, "progressing", step=2, weight=50, step_started_at=0.0, traffic_at=0.0)
    record = store.load("iris")
    record.analyses = [dead]
    store.save(record)
    registry = Registry(validated("1"), validated("2"), champion="1")
    result = run_with(registry, Backend(), Metrics(per_read=20), store)
    assert result.history[0] == dead and len(result.history) > 1
    assert "| 1 | 10% | fail | error_rate=0.5 (20, fail) |" in result.history_table()

"""The rollout's decisions with scripted metrics: no processes, an in-memory registry, a recording backend.

The end-to-end module runs the same code against real processes; here each
branch of the state machine is driven on purpose: promotion, failure limit,
held-too-long, a promotion that fails half-way, supersession, an error.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from ml_platform.deployment import rollout as rollout_module
from ml_platform.deployment.backend import DeploymentError
from ml_platform.deployment.measurements import TrackReading
from ml_platform.deployment.policy import RolloutPolicy
from ml_platform.deployment.rollout import CanaryRollout
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

"""The rollout policy: defaults, the spec's optional `rollout:` section, run-config overrides, validation."""

from pathlib import Path

import pytest
import yaml

from ml_platform.deployment.policy import PolicyError, RolloutPolicy, load_policy
from ml_platform.spec import load_spec


def test_defaults_follow_the_issue() -> None:
    policy = load_policy(load_spec("iris"))
    assert policy.steps == (10, 25, 50)
    assert policy.min_live_accuracy == 0.70
    assert policy.max_error_rate == 0.01
    assert policy.max_p95_latency_ms == 500
    assert policy.failure_limit >= 1 and policy.inconclusive_limit >= 1
    assert policy.total_pause_seconds == 3 * policy.step_pause_seconds


def test_spec_section_then_run_config_override(tmp_path: Path) -> None:
    raw = yaml.safe_load(load_spec("iris").source_path.read_text())  # type: ignore[union-attr]
    raw["rollout"] = {"steps": [5, 50], "step_pause_seconds": 30, "max_p95_latency_ms": 250}
    path = tmp_path / "iris-custom.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(str(path))

    from_spec = load_policy(spec)
    assert from_spec.steps == (5, 50) and from_spec.step_pause_seconds == 30 and from_spec.max_p95_latency_ms == 250
    overridden = load_policy(spec, {"steps": [20], "step_pause_seconds": None, "failure_limit": 1})
    assert overridden.steps == (20,)
    assert overridden.step_pause_seconds == 30  # None means "not overridden"
    assert overridden.failure_limit == 1
    assert "| steps | [20] |" in overridden.markdown()


@pytest.mark.parametrize(
    "changes",
    [
        {"steps": []},
        {"steps": [50, 10]},
        {"steps": [0, 10]},
        {"steps": [10, 120]},
        {"analysis_interval_seconds": 90, "step_pause_seconds": 60},
        {"min_live_accuracy": 1.5},
        {"failure_limit": 0},
    ],
)
def test_invalid_policies_are_refused(changes: dict) -> None:
    with pytest.raises(PolicyError):
        RolloutPolicy().with_overrides(changes)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(PolicyError, match="unknown rollout settings"):
        RolloutPolicy().with_overrides({"step_pauses": 3})

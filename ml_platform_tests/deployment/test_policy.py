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


def test_metrics_as_data_one_of_each_kind() -> None:
    policy = RolloutPolicy().with_overrides(
        {
            "metrics": [
                {"metric": "error_rate", "max": 0.02, "min_samples": 50},
                {"metric": "latency", "quantile": 0.99, "max_ms": 800},
                {"metric": "live_accuracy", "min": 0.8, "min_samples": 30},
                {"metric": "live_accuracy_vs_stable", "max_drop": 0.05},
            ],
            "error_limit": 5,
            "progress_deadline_seconds": 900,
            "webhooks": {"confirm_promotion": {"url": "https://ci.example/confirm", "timeout_seconds": 3}},
        }
    )
    names = [m.name for m in policy.metric_checks]
    assert names == ["error_rate", "p99_latency", "live_accuracy", "live_accuracy_vs_stable"]
    assert policy.metric_checks[0].min_samples == 50 and policy.metric_checks[1].min_samples == 20
    assert policy.error_limit == 5 and policy.deadline_seconds == 900
    assert policy.webhook("confirm_promotion").timeout_seconds == 3 and policy.webhook("pre_rollout") is None
    assert "| metric p99_latency | <= 800 ms (min 20 samples) |" in policy.markdown()
    defaults = RolloutPolicy().metric_checks  # no `metrics:`: the flat thresholds
    assert [(m.name, m.threshold) for m in defaults] == [
        ("error_rate", "<= 0.010"),
        ("p95_latency", "<= 500 ms"),
        ("live_accuracy", ">= 0.70"),
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metrics": [{"metric": "cpu", "max": 1}]}, "unknown metric"),
        ({"metrics": [{"metric": "error_rate"}]}, "`max` is required"),
        ({"metrics": [{"metric": "latency", "max_ms": 100, "quantile": 1.5}]}, "quantile"),
        ({"metrics": [{"metric": "live_accuracy", "min": "high"}]}, "must be a number"),
        ({"metrics": [{"metric": "error_rate", "max": 0.1, "maxx": 1}]}, "unknown keys"),
        ({"metrics": [{"metric": "error_rate", "max": 0.1}], "max_error_rate": 0.2}, "set the limits there"),
        ({"webhooks": {"post_rollout": "http://x"}}, "unknown hooks"),
        ({"webhooks": {"pre_rollout": "file:///etc/passwd"}}, "must be http"),
        ({"progress_deadline_seconds": 10}, "must exceed the policy's pauses"),
        ({"error_limit": 0}, "error_limit must be >= 1"),
    ],
)
def test_malformed_metric_policies_are_refused_with_a_clear_message(changes: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        RolloutPolicy().with_overrides(changes)

"""Prometheus configuration, rules and their promtool unit tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import MONITORING, require_binary, run

RULES = sorted((MONITORING / "rules").glob("*.rules.yml"))
RULE_TESTS = sorted((MONITORING / "rules" / "tests").glob("*.test.yml"))
CONFIGS = [MONITORING / "prometheus.yml", MONITORING / "prometheus-kubernetes.yml"]

RECORDING_RULES = {
    "ml_serving:error_rate:ratio_rate1m",
    "ml_serving:latency_seconds:p95_1m",
    "ml_serving:live_accuracy:ratio_rate5m",
}
ALERTS = {
    "CanaryErrorRateHigh",
    "ModelAccuracyLow",
    "DataDriftDetected",
    "PredictionPsiHigh",
    "ServingDown",
    "DriftReportStale",
}
# The metric contract of the serving service and the drift job.
CONTRACT_METRICS = {
    "ml_serving_requests_total",
    "ml_serving_request_duration_seconds_bucket",
    "ml_serving_feedback_total",
    "ml_platform_drift_share",
    "ml_platform_drift_detected",
    "ml_platform_prediction_psi",
}


def rules_of(kind: str) -> list[dict[str, Any]]:
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


def test_rule_files_define_the_contracted_rules():
    assert {r["record"] for r in rules_of("record")} == RECORDING_RULES
    assert {r["alert"] for r in rules_of("alert")} == ALERTS
    for alert in rules_of("alert"):
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]
    # Recording rules aggregate per model, track and model version.
    for rule in rules_of("record"):
        assert re.search(r"by \((le, )?model, track, model_version\)", rule["expr"]), rule["record"]
    expressions = " ".join(r["expr"] for r in rules_of("record") + rules_of("alert"))
    for metric in CONTRACT_METRICS:
        assert metric in expressions, metric


def test_psi_alert_has_a_warning_and_a_critical_band():
    severities = {r["labels"]["severity"]: r["expr"] for r in rules_of("alert") if r["alert"] == "PredictionPsiHigh"}
    assert set(severities) == {"warning", "critical"}
    assert "> 0.25" in severities["critical"]
    assert "> 0.1" in severities["warning"]


def test_promtool_check_rules():
    promtool = require_binary("promtool")
    result = run([promtool, "check", "rules", *map(str, RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULES)


def test_promtool_unit_tests_pass():
    promtool = require_binary("promtool")
    assert len(RULE_TESTS) == 2
    result = run([promtool, "test", "rules", *map(str, RULE_TESTS)], cwd=MONITORING / "rules" / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def _unit_tests() -> list[dict[str, Any]]:
    return [test for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]]


def test_unit_tests_cover_every_alert_firing_and_not_firing():
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in _unit_tests():
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == ALERTS
    assert quiet == ALERTS


def test_unit_tests_check_a_value_of_every_recording_rule():
    checked = {
        name
        for test in _unit_tests()
        for case in test.get("promql_expr_test", [])
        for name in RECORDING_RULES
        if name in case["expr"] and case["exp_samples"]
    }
    assert checked == RECORDING_RULES


def test_unit_tests_reference_the_rule_files():
    for path in RULE_TESTS:
        referenced = yaml.safe_load(path.read_text())["rule_files"]
        for rule_file in referenced:
            assert (path.parent / rule_file).resolve() in {r.resolve() for r in RULES}


def test_promtool_fails_a_broken_threshold(tmp_path: Path):
    """The unit tests bite: move the canary threshold and they fail."""
    promtool = require_binary("promtool")
    rules = (MONITORING / "rules" / "serving.rules.yml").read_text()
    assert 'ratio_rate1m{track="canary"} > 0.01' in rules
    (tmp_path / "serving.rules.yml").write_text(rules.replace('{track="canary"} > 0.01', '{track="canary"} > 0.1'))
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "serving.test.yml").write_text((MONITORING / "rules" / "tests" / "serving.test.yml").read_text())
    result = run([promtool, "test", "rules", "serving.test.yml"], cwd=tests)
    assert result.returncode != 0
    assert "CanaryErrorRateHigh" in result.stdout + result.stderr


def _promtool_supports_kubernetes_sd(promtool: str, tmp_path: Path) -> bool:
    probe = tmp_path / "probe.yml"
    probe.write_text(
        yaml.safe_dump({"scrape_configs": [{"job_name": "p", "kubernetes_sd_configs": [{"role": "pod"}]}]})
    )
    return run([promtool, "check", "config", str(probe)]).returncode == 0


def test_promtool_check_config_local():
    promtool = require_binary("promtool")
    result = run([promtool, "check", "config", str(CONFIGS[0])])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout + result.stderr


def test_promtool_check_config_kubernetes(tmp_path: Path):
    """Debian builds Prometheus without Kubernetes service discovery, so its
    promtool rejects `kubernetes_sd_configs` as an unknown field. Then the rest
    of the file (relabelling, rule files, the Pushgateway job) is checked with
    each Kubernetes SD block replaced by a static target."""
    promtool = require_binary("promtool")
    config = yaml.safe_load(CONFIGS[1].read_text())
    if _promtool_supports_kubernetes_sd(promtool, tmp_path):
        checked = CONFIGS[1]
    else:
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["10.0.0.1:8000"]}]
        config["rule_files"] = [str(MONITORING / f) for f in config["rule_files"]]
        checked = tmp_path / "prometheus-kubernetes.yml"
        checked.write_text(yaml.safe_dump(config))
    result = run([promtool, "check", "config", str(checked)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout + result.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_configs_scrape_serving_and_pushgateway_with_honor_labels(path: Path):
    config = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"ml-serving", "pushgateway"}
    # ServingDown watches up{job="ml-serving"}.
    assert 'up{job="ml-serving"}' in (MONITORING / "rules" / "serving.rules.yml").read_text()
    assert jobs["pushgateway"]["honor_labels"] is True
    # The serving series carry their own track/model_version labels; a target
    # label of the same name would rename them to exported_*.
    serving = jobs["ml-serving"]
    assert not serving.get("honor_labels", False)
    targets = [r.get("target_label") for r in serving.get("relabel_configs", [])]
    assert "track" not in targets and "model_version" not in targets
    for rule_file in config["rule_files"]:
        assert (path.parent / rule_file).resolve() in {r.resolve() for r in RULES}


def test_kubernetes_scrape_follows_the_pod_annotations(rendered):
    """The relabelling reads exactly the annotations the serving pods carry."""
    config = yaml.safe_load(CONFIGS[1].read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ml-serving"]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["ml-serving"]
    sources = {s for r in job["relabel_configs"] for s in r.get("source_labels", [])}
    deployment = next(o for o in rendered["base"] if o["kind"] == "Deployment")
    for annotation in deployment["spec"]["template"]["metadata"]["annotations"]:
        meta = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", annotation)
        assert meta in sources, annotation
    # The address rewrite turns "<ip>:<any port>" plus the annotation into "<ip>:8000".
    (rewrite,) = [r for r in job["relabel_configs"] if r.get("target_label") == "__address__"]
    match = re.fullmatch(rewrite["regex"], "10.1.2.3:9999;8000")
    assert match and rewrite["replacement"].replace("$1", match[1]).replace("$2", match[2]) == "10.1.2.3:8000"

"""The GitHub Actions workflow templates."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from .helpers import REPO_ROOT, WORKFLOWS

NAMES = ["ci", "train", "deploy"]
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / f"{name}.yml").read_text())
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def scripts(workflow: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(workflow))


@pytest.mark.parametrize("name", NAMES)
def test_workflow_parses_and_is_least_privilege(name):
    workflow = load(name)
    assert workflow["name"] == name
    assert workflow["on"]
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["defaults"]["run"]["shell"] == "bash"  # -eo pipefail
    for job_name, job in workflow["jobs"].items():
        assert job["runs-on"].startswith("ubuntu-"), job_name
        assert job["timeout-minutes"] <= 120, job_name
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step
            assert not step.get("continue-on-error"), step
            assert "|| true" not in step.get("run", ""), step


@pytest.mark.parametrize("name", NAMES)
def test_actions_are_pinned_by_commit_sha_with_the_release_named(name):
    text = (WORKFLOWS / f"{name}.yml").read_text()
    uses = [s["uses"] for s in steps(load(name)) if "uses" in s]
    assert uses
    for ref in uses:
        assert PINNED.match(ref), ref
        assert re.search(re.escape(ref) + r" # v\d+\.\d+\.\d+", text), f"{ref}: name the release in a comment"


@pytest.mark.parametrize("name", NAMES)
def test_no_untrusted_expression_is_spliced_into_a_script(name):
    """${{ }} inside run: is script injection; values go through env: instead."""
    for step in steps(load(name)):
        assert "${{" not in step.get("run", ""), step["run"]


def test_ci_installs_the_tools_and_runs_make_test():
    workflow = load("ci")
    assert {"push", "pull_request"} <= set(workflow["on"])
    (job,) = workflow["jobs"].values()
    assert job["container"]["image"].startswith("python:3.11.")
    script = scripts(workflow)
    installs = [line.split() for line in script.replace("\\\n", " ").splitlines() if "apt-get install" in line]
    packages = {word for words in installs for word in words}
    assert {"nginx", "prometheus", "prometheus-pushgateway", "chromium", "kubectl", "make"} <= packages
    assert "python3 -m venv .venv-tools && .venv-tools/bin/pip install checkov" in script
    (test,) = [s for s in steps(workflow) if s.get("name") == "Test"]
    assert test["run"].strip() == "make test"
    (upload,) = [s for s in steps(workflow) if "upload-artifact" in s.get("uses", "")]
    assert upload["if"] == "always()"
    assert upload["with"]["path"].rstrip("/") == "test-artifacts"


def test_train_runs_the_training_job_and_fails_with_it():
    workflow = load("train")
    assert set(workflow["on"]) == {"workflow_dispatch", "schedule"}
    assert workflow["on"]["schedule"][0]["cron"]
    (job,) = workflow["jobs"].values()
    assert job["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    (setup,) = [s for s in steps(workflow) if "setup-python" in s.get("uses", "")]
    assert setup["with"]["python-version"] == "3.11"
    assert "python -m pip install ." in scripts(workflow)
    (train,) = [s for s in steps(workflow) if "dagster job execute" in s.get("run", "")]
    assert "dagster job execute -m ml_platform -j training_job" in train["run"]
    # Piped into tee: only pipefail keeps dagster's exit code.
    assert "set -euo pipefail" in train["run"]
    assert "if" not in train
    # A missing secret fails the run before any work.
    assert "MLFLOW_TRACKING_URI is not set" in scripts(workflow)
    assert workflow["concurrency"]["cancel-in-progress"] is False


def test_deploy_builds_and_pushes_every_image_from_the_repo_root():
    workflow = load("deploy")
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    dockerfiles = [entry["dockerfile"] for entry in job["strategy"]["matrix"]["include"]]
    assert sorted(dockerfiles) == [
        "deploy/docker/Dockerfile",
        "deploy/docker/Dockerfile.dagster",
        "deploy/docker/Dockerfile.mlflow",
    ]
    for dockerfile in dockerfiles:
        assert (REPO_ROOT / dockerfile).is_file()
    (build,) = [s for s in steps(workflow) if "build-push-action" in s.get("uses", "")]
    assert build["with"]["context"] == "."
    assert build["with"]["push"] is True
    assert build["with"]["file"] == "${{ matrix.dockerfile }}"
    assert "kustomize edit set image ml-platform-serving=" in scripts(workflow)

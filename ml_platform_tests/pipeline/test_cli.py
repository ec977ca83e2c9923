"""`dagster job execute -m ml_platform -j training_job` as CI calls it: exit codes and effects."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_platform_tests.conftest import REPO_ROOT
from ml_platform_tests.pipeline.helpers import model_versions, registry_client

pytestmark = pytest.mark.slow

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _execute(extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(extra_env or {})}
    return subprocess.run(
        [DAGSTER, "job", "execute", "-m", "ml_platform", "-j", "training_job"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_cli_exits_zero_when_gates_pass_and_nonzero_when_a_blocking_check_fails(platform_home: Path) -> None:
    passed = _execute()
    assert passed.returncode == 0, passed.stderr[-3000:]
    assert "RUN_SUCCESS" in passed.stdout + passed.stderr
    client = registry_client()
    assert str(client.get_model_version_by_alias("iris-random-forest", "challenger").version) == "1"
    # the run is recorded in the persistent instance under DAGSTER_HOME
    assert any((platform_home / "dagster").rglob("*.db"))

    failed = _execute({"MODEL_MIN_ACCURACY": "1.01"})
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "meets_metric_thresholds" in output and "failed" in output
    assert "accuracy" in output and "1.0100" in output
    versions = model_versions("iris-random-forest")
    assert [v.tags.get("validation_status") for v in versions] == ["passed", "failed"]

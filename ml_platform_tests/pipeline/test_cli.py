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

    # the same retrain again (same data, code and gate settings as the rejected v2): skipped, exit 0
    again = _execute({"MODEL_MIN_ACCURACY": "1.01"})
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "not retrained: version 2 of iris-random-forest" in output
    assert len(model_versions("iris-random-forest")) == 2


def test_cli_sweep_trains_the_good_file_and_exits_nonzero_naming_the_rejected_one(platform_home: Path) -> None:
    from ml_platform.spec import load_spec
    from ml_platform_tests.pipeline.helpers import age, landing_zone
    from ml_platform_tests.validation.bad_files import write_bad_file

    zone = landing_zone()
    good = zone.incoming_dir / "good.csv"
    good.write_bytes(load_spec().bootstrap_path().read_bytes())
    age(good, 120)
    age(write_bad_file(zone.incoming_dir, "renamed_column.csv"), 60)

    mixed = _execute()
    output = mixed.stdout + mixed.stderr
    assert mixed.returncode != 0, output[-3000:]
    assert "every_landed_file_accepted" in output
    assert "renamed_column.csv@" in output and "missing column petal_width" in output
    # ... and yet the good file was accepted and trained on in the same run
    (version,) = model_versions("iris-random-forest")
    assert version.tags["validation_status"] == "passed"
    assert [p.name.split("@")[0] for p in zone.accepted_files()] == ["good"]
    assert any(p.name.endswith(".report.json") for p in zone.quarantine_dir.iterdir())

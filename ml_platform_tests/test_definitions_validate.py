"""``dagster definitions validate`` accepts the code location: what a CI pipeline runs before deploying it.

It checks more than loading does (the asset graph's partition mappings across every model), so a
dependency between differently partitioned assets without a mapping fails here, not in a user's UI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_dagster_definitions_validate_passes(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "ML_PLATFORM_HOME": str(tmp_path / "home")}
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "ml_platform"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Validation successful for code location ml_platform" in result.stderr + result.stdout

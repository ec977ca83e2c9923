"""The import-linter contracts of pyproject.toml hold, and they do catch a plain module importing Dagster."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ml_platform_tests.conftest import REPO_ROOT

LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_layer_contracts_are_kept() -> None:
    result = _lint(REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


def test_a_plain_module_importing_dagster_or_the_dagster_layer_breaks_them(tmp_path: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.csv")
    for package in ("ml_platform", "serving"):
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "ml_platform/ml/leaky.py").write_text(
        "def build() -> object:\n"
        "    import dagster\n\n"
        "    from ml_platform.defs.resources import JsonIOManager\n\n"
        "    return dagster, JsonIOManager\n"
    )
    (tmp_path / "serving/leaky.py").write_text("from ml_platform.ml import leaky\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    out = result.stdout
    assert "Only the Dagster layer imports Dagster BROKEN" in out
    assert "Nothing below the Dagster layer imports it BROKEN" in out
    assert "Plain libraries and serving never reach Dagster or the Dagster layer BROKEN" in out
    assert "ml_platform.ml.leaky -> dagster" in out
    assert "serving.leaky -> ml_platform.ml.leaky" in out

"""Onboarding is configuration: scaffold an instance (dg or the CLI), fill in the spec, check it.

The dg tests run the real ``dg`` (dagster-dg-cli) on a temporary copy of the project, so the
package's own models folder is never written to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml_platform.catalog import MODELS_DIR, get_model, list_models
from ml_platform.onboarding import check_models, render_templates, scaffold_model, template_warnings
from ml_platform_tests.conftest import REPO_ROOT

DG = Path(sys.executable).parent / "dg"


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A models folder holding a copy of iris (the default model)."""
    folder = tmp_path / "models"
    shutil.copytree(MODELS_DIR / "iris", folder / "iris")
    return folder


def _fill_in(spec_yaml: Path, data_rows: list[str]) -> None:
    """What a user does with the template: real columns, classes and data."""
    raw = yaml.safe_load(spec_yaml.read_text())
    raw["description"] = "Which plan a customer buys"
    raw["bootstrap_file"] = "plans.csv"
    raw["features"] = [
        {"name": "age", "type": "int", "min": 18, "max": 100},
        {"name": "region", "type": "category", "categories": ["north", "south"]},
    ]
    raw["target"] = {"name": "plan", "classes": ["basic", "premium"]}
    spec_yaml.write_text(yaml.safe_dump(raw, sort_keys=False))
    (spec_yaml.parent / "plans.csv").write_text("\n".join(["age,region,plan", *data_rows]) + "\n")


def test_a_scaffolded_model_loads_and_after_filling_in_is_a_catalog_model(models_dir: Path) -> None:
    written = scaffold_model("plans", models_dir)
    assert [p.name for p in written] == ["defs.yaml", "spec.yaml"]
    assert written[1].read_text().startswith("# yaml-language-server: $schema=../../../../docs/spec.schema.json\n")
    # the template itself is a valid instance (the code location keeps loading), flagged as unfinished
    assert check_models(models_dir) == []
    assert [w.split(":")[0] for w in template_warnings(models_dir)] == [str(written[1])]
    template = get_model("plans", models_dir)
    assert not template.default and template.spec.model.name == "plans-model"
    assert template.spec.categorical_features == ["segment"]

    _fill_in(written[1], ["25,north,basic", "61,south,premium", "33,south,basic"])
    assert check_models(models_dir) == [] and template_warnings(models_dir) == []
    entry = get_model("plans", models_dir)
    assert entry.spec.feature_names == ["age", "region"] and entry.spec.target.classes == ("basic", "premium")
    assert entry.spec.bootstrap_path() == (written[1].parent / "plans.csv").resolve()
    assert [e.name for e in list_models(models_dir)] == ["iris", "plans"]
    assert get_model(None, models_dir).name == "iris"


def test_scaffolding_refuses_bad_names_and_existing_models(models_dir: Path) -> None:
    from ml_platform.onboarding import ScaffoldError

    for bad in ("Plans", "9lives", "a-b", "../escape", "x" * 41):
        with pytest.raises(ScaffoldError, match="not a valid model name"):
            scaffold_model(bad, models_dir)
    with pytest.raises(ScaffoldError, match=r"already holds defs\.yaml, spec\.yaml"):
        scaffold_model("iris", models_dir)
    assert sorted(p.name for p in models_dir.iterdir()) == ["iris"]


def test_a_bad_instance_fails_the_check_naming_file_and_key(models_dir: Path) -> None:
    defs_yaml, spec_yaml = scaffold_model("plans", models_dir)
    defs_yaml.write_text(defs_yaml.read_text().replace("  spec: spec.yaml", "  sepc: spec.yaml"))
    problems = [str(p) for p in check_models(models_dir)]
    assert problems == [f"{defs_yaml}: attributes.sepc: unknown key; allowed: spec, default, owners, description"]

    defs_yaml.write_text(defs_yaml.read_text().replace("  sepc: spec.yaml", "  spec: spec.yaml"))
    raw = yaml.safe_load(spec_yaml.read_text())
    raw["features"][1]["min"] = -5
    raw["features"][2]["type"] = "text"
    raw["model"]["estimator"] = "sklearn.pipeline.Pipeline"
    spec_yaml.write_text(yaml.safe_dump(raw))
    problems = [str(p) for p in check_models(models_dir)]
    resolved = spec_yaml.resolve()
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{resolved}: features[2].type (feature 'segment'): must be one of 'float', 'int'")
    assert problems[1].startswith(f"{resolved}: model.estimator: must be a public scikit-learn classifier path")

    raw["features"][2]["type"] = "category"
    raw["model"]["estimator"] = "sklearn.ensemble.RandomForestClassifier"
    raw["features"][1]["max"] = -10
    spec_yaml.write_text(yaml.safe_dump(raw))
    assert [str(p) for p in check_models(models_dir)] == [
        f"{resolved}: features[1].min (feature 'feature_b'): min -5 is greater than max -10"
    ]

    raw["features"][1]["max"] = 10
    raw["model"]["name"] = "iris-random-forest"  # iris registers that name already
    spec_yaml.write_text(yaml.safe_dump(raw))
    [problem] = [str(p) for p in check_models(models_dir)]
    assert problem.startswith(f"{models_dir}: models 'iris' and 'plans' register the same MLflow model")

    raw["model"]["name"] = "plans-model"
    spec_yaml.write_text(yaml.safe_dump(raw))
    defs_yaml.write_text(defs_yaml.read_text().replace("default: false", "default: true"))
    [problem] = [str(p) for p in check_models(models_dir)]
    assert "exactly one model must set `default: true`; found 2" in problem


def _module(*args: str, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(pythonpath), "DAGSTER_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_catalog_check_command_exit_codes_and_messages(models_dir: Path) -> None:
    ok = _module(
        "-m", "ml_platform.catalog", "--models-dir", str(models_dir), "check", cwd=REPO_ROOT, pythonpath=REPO_ROOT
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "ok: iris", ok.stderr
    made = _module(
        "-m",
        "ml_platform.catalog",
        "--models-dir",
        str(models_dir),
        "scaffold",
        "plans",
        cwd=REPO_ROOT,
        pythonpath=REPO_ROOT,
    )
    assert made.returncode == 0 and f"wrote {models_dir / 'plans' / 'spec.yaml'}" in made.stdout
    warned = _module(
        "-m", "ml_platform.catalog", "--models-dir", str(models_dir), "check", cwd=REPO_ROOT, pythonpath=REPO_ROOT
    )
    assert warned.returncode == 0 and "still holds scaffold placeholders" in warned.stderr
    spec_yaml = models_dir / "plans" / "spec.yaml"
    spec_yaml.write_text(spec_yaml.read_text().replace("test_size: 0.25", "test_size: 2"))
    bad = _module(
        "-m", "ml_platform.catalog", "--models-dir", str(models_dir), "check", cwd=REPO_ROOT, pythonpath=REPO_ROOT
    )
    assert bad.returncode == 1
    assert f"{spec_yaml.resolve()}: model.test_size: Input should be less than 1; got 2" in bad.stderr


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the project (pyproject with [tool.dg], the packages) to scaffold into."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("ml_platform", "serving", "docs"):
        shutil.copytree(REPO_ROOT / package, root / package, ignore=ignore)
    return root


def _dg(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(cwd), "DAGSTER_DISABLE_TELEMETRY": "true", "NO_COLOR": "1"}
    return subprocess.run([str(DG), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not DG.exists(), reason="dagster-dg-cli (dev extra) is not installed")
def test_dg_scaffold_writes_the_templates_and_dg_checks_the_instance(project_copy: Path) -> None:
    listed = _dg("list", "components", cwd=project_copy)
    assert "ml_platform.components.ModelPipeline" in listed.stdout, listed.stderr
    made = _dg("scaffold", "defs", "ml_platform.components.ModelPipeline", "models/plans", cwd=project_copy)
    assert made.returncode == 0, made.stderr
    folder = project_copy / "ml_platform/defs/models/plans"
    assert {p.name: p.read_text() for p in folder.iterdir()} == render_templates("plans")
    assert _dg("check", "yaml", str(folder), cwd=project_copy).returncode == 0

    again = _dg("scaffold", "defs", "ml_platform.components.ModelPipeline", "models/plans", cwd=project_copy)
    assert again.returncode != 0 and {p.name: p.read_text() for p in folder.iterdir()} == render_templates("plans")
    bad_name = _dg("scaffold", "defs", "ml_platform.components.ModelPipeline", "models/Bad-Name", cwd=project_copy)
    assert bad_name.returncode != 0 and "not a valid model name" in bad_name.stdout + bad_name.stderr

    defs_yaml = folder / "defs.yaml"
    defs_yaml.write_text(defs_yaml.read_text().replace("  spec: spec.yaml", "  sepc: spec.yaml"))
    checked = _dg("check", "yaml", str(folder), cwd=project_copy)
    assert checked.returncode != 0
    assert f"{defs_yaml}:6" in checked.stdout and "attributes.sepc" in checked.stdout, checked.stdout

    defs_yaml.write_text(defs_yaml.read_text().replace("  sepc: spec.yaml", "  spec: spec.yaml"))
    spec_yaml = folder / "spec.yaml"
    spec_yaml.write_text(spec_yaml.read_text().replace("max: 100.0", "max: -1.0"))
    loaded = _dg("check", "defs", cwd=project_copy)
    assert loaded.returncode != 0
    assert (
        f"{spec_yaml}: features[0].min (feature 'feature_a'): min 0 is greater than max -1"
        in loaded.stdout + loaded.stderr
    )


@pytest.mark.skipif(not DG.exists(), reason="dagster-dg-cli (dev extra) is not installed")
def test_dg_loads_three_models_with_the_churn_one(project_copy: Path) -> None:
    listed = _dg("list", "defs", "--json", cwd=project_copy)
    assert listed.returncode == 0, listed.stderr
    for name in ("iris", "wine", "churn"):
        assert f'"{name}/candidate_model"' in listed.stdout.replace('"key": "', '"')
        assert f"{name}_training_job" in listed.stdout


def test_the_cli_scaffold_model_subcommand_writes_into_the_package_models_folder(project_copy: Path) -> None:
    made = _module("-m", "ml_platform.cli", "scaffold-model", "plans", cwd=project_copy, pythonpath=project_copy)
    assert made.returncode == 0, made.stderr
    folder = project_copy / "ml_platform/defs/models/plans"
    assert {p.name: p.read_text() for p in folder.iterdir()} == render_templates("plans")
    again = _module("-m", "ml_platform.cli", "scaffold-model", "plans", cwd=project_copy, pythonpath=project_copy)
    assert again.returncode == 2 and "already holds" in again.stderr
    assert not (MODELS_DIR / "plans").exists()  # the real package was not touched

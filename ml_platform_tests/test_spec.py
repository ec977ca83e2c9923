"""The dataset spec: parsing, validation errors (file + key path + what is allowed), overrides, JSON Schema."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml_platform.catalog import MODELS_DIR, model_names
from ml_platform.spec import FeatureSpec, SpecError, json_schema, load_spec, load_spec_file, parse_spec, schema_text
from ml_platform_tests.conftest import REPO_ROOT

IRIS_SPEC = MODELS_DIR / "iris" / "spec.yaml"
SCHEMA_FILE = REPO_ROOT / "docs" / "spec.schema.json"


def _iris_raw() -> dict:
    return yaml.safe_load(IRIS_SPEC.read_text())


def test_default_iris_spec_names_the_documented_columns_and_model() -> None:
    spec = load_spec("iris")
    assert spec.feature_names == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert spec.target.name == "target"
    assert list(spec.target.classes) == [0, 1, 2]
    assert spec.target.labels == ("setosa", "versicolor", "virginica")
    assert spec.model.name == "iris-random-forest"
    assert spec.model.estimator == "sklearn.ensemble.RandomForestClassifier"
    assert spec.model.params["n_estimators"] == 100
    assert spec.model.test_size == pytest.approx(0.25)
    assert spec.thresholds.min_accuracy == pytest.approx(0.70)
    assert spec.validation.min_classes == 2 and spec.validation.min_rows == 10
    assert spec.reference_max_rows == 100_000
    assert spec.source_path == IRIS_SPEC.resolve()
    assert spec.numeric_features == spec.feature_names and spec.categorical_features == []


def test_defaults_fill_every_optional_section() -> None:
    raw = {
        "name": "tiny",
        "features": [{"name": "x"}],
        "target": {"name": "y", "classes": ["a", "b"]},
        "model": {"name": "tiny-model", "estimator": "sklearn.tree.DecisionTreeClassifier"},
    }
    spec = parse_spec(raw)
    assert spec.features[0].type == "float" and spec.features[0].min is None
    assert spec.model.params == {} and spec.model.test_size == pytest.approx(0.2) and spec.model.random_state == 42
    assert spec.thresholds.min_accuracy == pytest.approx(0.70) and spec.thresholds.min_macro_f1 is None
    assert spec.validation.min_classes == 2 and spec.validation.max_rows == 10_000_000
    assert spec.drift.severity == "WARN" and spec.drift.min_window_rows == 30
    assert spec.reference_max_rows == 100_000 and spec.bootstrap_path() is None and spec.source_path is None


def test_every_model_of_the_catalog_loads_and_has_bundled_data() -> None:
    names = model_names()
    assert {"iris", "wine", "churn"} <= set(names)
    for name in names:
        spec = load_spec(name)
        bootstrap = spec.bootstrap_path()
        assert bootstrap is not None and bootstrap.exists(), name
        header = bootstrap.read_text().splitlines()[0].split(",")
        assert sorted(header) == sorted(spec.columns), name


def test_the_spec_is_frozen_and_replace_revalidates() -> None:
    spec = load_spec("iris")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    changed = dataclasses.replace(spec, model=dataclasses.replace(spec.model, params={}))
    assert changed.model.params == {} and spec.model.params
    with pytest.raises(ValueError, match="scikit-learn"):
        dataclasses.replace(spec.model, estimator="os.system")
    assert FeatureSpec("colour", "category", categories=("red", "blue")).categories == ("red", "blue")


def test_model_min_accuracy_environment_overrides_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec("iris")
    monkeypatch.setenv("MODEL_MIN_ACCURACY", "0.95")
    assert spec.min_accuracy == pytest.approx(0.95)
    monkeypatch.setenv("MODEL_MIN_ACCURACY", "high")
    with pytest.raises(SpecError, match="MODEL_MIN_ACCURACY"):
        _ = spec.min_accuracy


def test_a_spec_can_be_loaded_from_a_yaml_path(tmp_path: Path) -> None:
    raw = _iris_raw() | {"name": "custom"}
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_spec(str(path)).name == "custom"


@pytest.mark.parametrize(
    ("mutate", "key", "message"),
    [
        (lambda r: r.pop("features"), "features", "missing required key"),
        (lambda r: r["features"].append(dict(r["features"][0])), "features", "duplicate feature names"),
        (lambda r: r["features"][0].update(type="text"), "features[0].type", "must be one of 'float', 'int'"),
        (lambda r: r["features"][2].update(min=5, max=1), "features[2].min", "greater than max"),
        (lambda r: r["features"][1].update(max=1e39), "features[1].max", "float32"),
        (lambda r: r["features"][1].update(min=float("nan")), "features[1].min", "finite"),
        (lambda r: r["target"].update(classes=[1]), "target.classes", "at least two classes"),
        (lambda r: r["target"].update(classes=[True, False]), "target.classes", "quote them"),
        (lambda r: r["target"].update(labels=["a"]), "target.labels", "one label per class"),
        (lambda r: r["model"].update(estimator="os.system"), "model.estimator", "public scikit-learn classifier"),
        (lambda r: r["model"].update(name="bad name; rm"), "model.name", "must match"),
        (lambda r: r["model"].update(test_size=1.5), "model.test_size", "less than 1"),
        (lambda r: r["features"].append({"name": "colour", "type": "category"}), "features[4].categories", "non-empty"),
        (lambda r: r["features"][0].update(categories=["a"]), "features[0].categories", "only 'category' features"),
        (lambda r: r["validation"].update(min_classes=4), "validation.min_classes", "between 1 and 3"),
        (lambda r: r["validation"].update(min_rows_per_class=0), "validation.min_rows_per_class", "greater than"),
        (lambda r: r["drift"].update(severity="PANIC"), "drift.severity", "'WARN' or 'ERROR'"),
        (lambda r: r["thresholds"].update(min_acuracy=0.9), "thresholds.min_acuracy", "allowed here: min_accuracy"),
        (lambda r: r.update(bootstrap_file="../../etc/passwd"), "bootstrap_file", "must match"),
        (lambda r: r.update(name="Iris Data"), "name", "must match"),
    ],
)
def test_invalid_specs_name_the_file_the_key_and_what_is_allowed(mutate, key: str, message: str) -> None:
    raw = _iris_raw()
    mutate(raw)
    with pytest.raises(SpecError) as info:
        parse_spec(raw, source_path=Path("/models/x/spec.yaml"))
    text = str(info.value)
    assert text.startswith("/models/x/spec.yaml: "), text
    assert [p for p, m in info.value.problems if p.split(" ")[0] == key and message in m], text


def test_several_problems_are_reported_together_with_the_feature_name(tmp_path: Path) -> None:
    raw = _iris_raw()
    raw["features"][3]["type"] = "string"
    raw["model"]["estimator"] = "sklearn.pipeline.Pipeline"
    raw["colour"] = "red"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    text = str(info.value)
    assert text.startswith(f"{path.resolve()}: 3 problems:")
    assert "features[3].type (feature 'petal_width'): must be one of" in text
    assert "model.estimator: must be a public scikit-learn classifier" in text
    assert "colour: unknown key; allowed here: bootstrap_file, description, drift, evaluation, features" in text


def test_unreadable_and_non_mapping_files_are_spec_errors(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec_file(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec_file(path)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec_file(tmp_path / "missing.yaml")


def test_unknown_model_name_lists_the_models() -> None:
    with pytest.raises(SpecError, match="iris"):
        load_spec("does_not_exist")


def test_committed_json_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "docs/spec.schema.json is stale: python -m ml_platform.spec --schema > docs/spec.schema.json"
    )
    out = subprocess.run(
        [sys.executable, "-m", "ml_platform.spec", "--schema"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    ).stdout
    assert json.loads(out) == json_schema()


def test_json_schema_documents_every_key_and_flags_what_pydantic_flags() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "features", "target", "model"}
    assert "source_path" not in schema["properties"]

    def walk(node: dict, where: str) -> None:
        for key, prop in node.get("properties", {}).items():
            assert prop.get("description"), f"{where}.{key} has no description"

    for name, definition in schema["$defs"].items():
        walk(definition, name)
    walk(schema, "spec")
    feature = schema["$defs"]["FeatureSpec"]["properties"]
    assert feature["type"]["enum"] == ["float", "int", "category"] and feature["type"]["default"] == "float"
    assert schema["$defs"]["ModelSpec"]["properties"]["estimator"]["pattern"].startswith("^sklearn\\.(")


def test_every_spec_yaml_points_editors_at_the_schema() -> None:
    for spec_yaml in MODELS_DIR.glob("*/spec.yaml"):
        first = spec_yaml.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../../../../docs/spec.schema.json", spec_yaml
        assert (spec_yaml.parent / "../../../../docs/spec.schema.json").resolve() == SCHEMA_FILE


def test_the_command_line_validates_files(tmp_path: Path) -> None:
    bad = tmp_path / "spec.yaml"
    bad.write_text(yaml.safe_dump(_iris_raw() | {"name": "BAD"}))
    result = subprocess.run(
        [sys.executable, "-m", "ml_platform.spec", str(IRIS_SPEC), str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1
    assert "iris: 4 features" in result.stdout
    assert f"{bad.resolve()}: name: must match" in result.stderr


def test_docs_models_md_documents_every_key_of_the_schema() -> None:
    docs = (REPO_ROOT / "docs" / "models.md").read_text()
    schema = json_schema()
    keys = set(schema["properties"]) - {"source_path"}
    for definition in schema["$defs"].values():
        keys |= set(definition.get("properties", {}))
    key_cells = [line.split("|")[1] for line in docs.splitlines() if line.startswith("| `")]
    missing = sorted(k for k in keys if not any(f"`{k}`" in cell for cell in key_cells))
    assert not missing, f"docs/models.md does not document {missing}"

"""The dataset spec: parsing, validation errors and overrides."""

from pathlib import Path

import pytest
import yaml

from ml_platform.spec import SPECS_DIR, SpecError, load_spec, parse_spec


def _iris_raw() -> dict:
    return yaml.safe_load((SPECS_DIR / "iris.yaml").read_text())


def test_default_iris_spec_names_the_documented_columns_and_model() -> None:
    spec = load_spec("iris")
    assert spec.feature_names == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert spec.target.name == "target"
    assert list(spec.target.classes) == [0, 1, 2]
    assert spec.model.name == "iris-random-forest"
    assert spec.thresholds.min_accuracy == pytest.approx(0.70)


def test_every_bundled_spec_loads_and_has_bundled_data() -> None:
    for path in SPECS_DIR.glob("*.yaml"):
        spec = load_spec(path.stem)
        bootstrap = spec.bootstrap_path()
        assert bootstrap is not None and bootstrap.exists(), path
        header = bootstrap.read_text().splitlines()[0].split(",")
        assert sorted(header) == sorted(spec.columns), path


def test_model_min_accuracy_environment_overrides_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec("iris")
    monkeypatch.setenv("MODEL_MIN_ACCURACY", "0.95")
    assert spec.min_accuracy == pytest.approx(0.95)
    monkeypatch.setenv("MODEL_MIN_ACCURACY", "high")
    with pytest.raises(SpecError, match="MODEL_MIN_ACCURACY"):
        _ = spec.min_accuracy


def test_active_spec_can_be_a_yaml_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _iris_raw() | {"name": "custom"}
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("ML_PLATFORM_SPEC", str(path))
    assert load_spec().name == "custom"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("features"), "features"),
        (lambda r: r["features"].append(dict(r["features"][0])), "duplicate"),
        (lambda r: r["features"][0].update(type="text"), "type must be"),
        (lambda r: r["features"][0].update(min=5, max=1), "greater than max"),
        (lambda r: r["target"].update(classes=[1]), "at least two classes"),
        (lambda r: r["model"].update(estimator="os.system"), "scikit-learn"),
        (lambda r: r["features"].append({"name": "colour", "type": "category"}), "categories"),
    ],
)
def test_invalid_specs_are_rejected_with_a_clear_message(mutate, message: str) -> None:
    raw = _iris_raw()
    mutate(raw)
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def test_unknown_spec_name_lists_the_bundled_ones() -> None:
    with pytest.raises(SpecError, match="iris"):
        load_spec("does-not-exist")

"""The GX suite generated from the spec rejects every kind of bad file with a readable report."""

import json
from pathlib import Path

import pytest

from ml_platform.spec import load_spec
from ml_platform.validation.expectations import build_expectations, validate_batch
from ml_platform.validation.reader import read_batch
from ml_platform_tests.validation.bad_files import BAD_FILES, GOOD_ROWS, HEADER, write_bad_file, write_good_file


@pytest.fixture(scope="module")
def spec():
    return load_spec("iris")


def test_suite_is_generated_from_the_spec(spec) -> None:
    kinds = [type(e).__name__ for e, _ in build_expectations(spec)]
    assert "ExpectTableColumnsToMatchSet" in kinds
    assert "ExpectTableRowCountToBeBetween" in kinds
    # one range and one not-null expectation per numeric feature, class set for the target
    assert kinds.count("ExpectColumnValuesToBeBetween") == len(spec.features)
    assert kinds.count("ExpectColumnValuesToNotBeNull") == len(spec.features) + 1
    assert kinds.count("ExpectColumnValuesToBeInSet") == 1


def test_bundled_iris_data_passes(spec) -> None:
    report = validate_batch(read_batch(spec.bootstrap_path(), spec), spec)
    assert report.success, report.summary()
    assert report.rows == 150
    assert all(o.success for o in report.outcomes)


def test_a_small_good_file_passes(tmp_path: Path, spec) -> None:
    report = validate_batch(read_batch(write_good_file(tmp_path), spec), spec)
    assert report.success, report.summary()


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_rejected_with_a_readable_report(tmp_path: Path, spec, name: str) -> None:
    path = write_bad_file(tmp_path, name)
    report = validate_batch(read_batch(path, spec), spec)
    assert not report.success
    expected_text = BAD_FILES[name][1]
    readable = report.summary() + "\n" + report.to_markdown()
    assert expected_text.lower() in readable.lower(), readable
    payload = json.loads(report.to_json())
    assert payload["file"] == name and payload["success"] is False
    assert path.exists(), "validation must never delete the file"


def test_failing_rows_are_counted_and_sampled(tmp_path: Path, spec) -> None:
    report = validate_batch(read_batch(write_bad_file(tmp_path, "out_of_range.csv"), spec), spec)
    failed = [o for o in report.failed if o.expectation == "expect_column_values_to_be_between"]
    assert len(failed) == 1
    assert failed[0].column == "sepal_length"
    assert failed[0].unexpected_count == 1
    assert failed[0].sample_values == [55.0]
    assert failed[0].sample_rows and failed[0].sample_rows[0]["sepal_length"] == 55.0
    assert "Sample failing rows" in report.to_markdown()


def _report(tmp_path: Path, spec, text: str, name: str = "batch.csv"):
    path = tmp_path / name
    path.write_text(text)
    return validate_batch(read_batch(path, spec), spec)


def test_reports_lead_with_one_plain_sentence_per_problem(tmp_path: Path, spec) -> None:
    rows = [r.split(",") for r in GOOD_ROWS]
    missing = "sepal_length,sepal_width,petal_length,target\n" + "\n".join(",".join([*r[:3], r[4]]) for r in rows)
    assert _report(tmp_path, spec, missing).problems == ["missing column petal_width"]

    duplicate = HEADER.replace("target", "petal_width,target") + "\n"
    duplicate += "\n".join(",".join([*r[:4], r[3], r[4]]) for r in rows)
    report = _report(tmp_path, spec, duplicate)
    assert report.problems == ["duplicate column petal_width"]
    assert "petal_width.1" not in report.to_json()

    lines = [HEADER, *GOOD_ROWS]
    lines[6] = "5.1,abc,1.4,0.2,0"  # the sixth data row
    report = _report(tmp_path, spec, "\n".join(lines))
    assert report.problems == ["non-numeric value 'abc' in column sepal_width at row 6"]
    payload = json.loads(report.to_json())
    assert list(payload)[:2] == ["file", "problems"] and payload["problems"] == report.problems
    markdown = report.to_markdown().splitlines()
    assert markdown[2] == "- **non-numeric value 'abc' in column sepal_width at row 6**"
    assert report.summary().startswith("batch.csv: rejected: non-numeric value 'abc'")

    ragged = "\n".join([HEADER, *GOOD_ROWS[:3], "5.1,3.5,1.4,0.2,0,9,9", *GOOD_ROWS[3:]])
    assert _report(tmp_path, spec, ragged).problems == ["line 5 has 7 fields; the header has 5"]
    for text in (missing, duplicate, ragged, HEADER + "\n", HEADER + ",\n1,2,3,4,0,9\n"):
        for problem in _report(tmp_path, spec, text).problems:
            assert "index out of range" not in problem and "reindex" not in problem, problem


@pytest.mark.parametrize(("dataset", "label"), [("iris", "setosa"), ("wine", "class_1")])
def test_a_single_class_batch_is_rejected(tmp_path: Path, dataset: str, label: str) -> None:
    import pandas as pd

    spec = load_spec(dataset)
    frame = pd.read_csv(spec.bootstrap_path())
    single = frame[frame[spec.target.name] == spec.target.classes[spec.target.labels.index(label)]]
    path = tmp_path / "single.csv"
    single.to_csv(path, index=False)
    report = validate_batch(read_batch(path, spec), spec)
    assert not report.success
    assert report.problems == [f"only one class ({label}); at least 2 required"]
    two = frame[frame[spec.target.name].isin(spec.target.classes[:2])]
    two.to_csv(path, index=False)
    assert validate_batch(read_batch(path, spec), spec).success


def test_minimum_classes_and_rows_per_class_come_from_the_spec(tmp_path: Path) -> None:
    import pandas as pd
    import yaml

    from ml_platform.catalog import MODELS_DIR
    from ml_platform.spec import BUNDLED_DATA_DIR, SpecError, parse_spec

    raw = yaml.safe_load((MODELS_DIR / "iris" / "spec.yaml").read_text())
    raw["validation"] = {"min_rows": 1, "min_classes": 3, "min_rows_per_class": 10}
    strict = parse_spec(raw)
    frame = pd.read_csv(strict.bootstrap_path() if strict.bootstrap_file else BUNDLED_DATA_DIR / "iris.csv")
    path = tmp_path / "uneven.csv"
    pd.concat([frame[frame.target == 0], frame[frame.target == 1].head(4)]).to_csv(path, index=False)
    report = validate_batch(read_batch(path, strict), strict)
    assert report.problems == [
        "only 2 classes (setosa, versicolor); at least 3 required",
        "class versicolor has only 4 row(s); at least 10 required",
    ]
    raw["validation"] = {"min_classes": 4}
    with pytest.raises(SpecError, match="min_classes"):
        parse_spec(raw)

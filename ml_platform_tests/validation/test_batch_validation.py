"""The GX suite generated from the spec rejects every kind of bad file with a readable report."""

import json
from pathlib import Path

import pytest

from ml_platform.spec import load_spec
from ml_platform.validation.expectations import build_expectations, validate_batch
from ml_platform.validation.reader import read_batch
from ml_platform_tests.validation.bad_files import BAD_FILES, write_bad_file, write_good_file


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

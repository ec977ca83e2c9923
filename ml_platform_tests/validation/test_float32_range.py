"""A landed value beyond the float32 range is rejected by the batch gate even without a spec range.

The ONNX graph computes in float32: 1e300 becomes infinity there while sklearn keeps it finite,
and the two runtimes predicted different classes. The generated suite bounds every numeric
feature by the spec's range clipped to float32 (and so also refuses infinities).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ml_platform.catalog import MODELS_DIR
from ml_platform.spec import parse_spec
from ml_platform.validation.expectations import validate_batch
from ml_platform.validation.reader import read_batch
from ml_platform_tests.validation.bad_files import GOOD_ROWS, HEADER


@pytest.mark.parametrize("value", ["1e300", "-3.5e38", "inf"])
def test_values_beyond_float32_are_rejected_without_a_spec_range(tmp_path: Path, value: str) -> None:
    raw = yaml.safe_load((MODELS_DIR / "iris" / "spec.yaml").read_text())
    for feature in raw["features"]:
        feature.pop("min", None)
        feature.pop("max", None)
    spec = parse_spec(raw, source_path=MODELS_DIR / "iris" / "spec.yaml")
    good = tmp_path / "good.csv"
    good.write_text("\n".join([HEADER, *GOOD_ROWS, "3.4e38,3.4,1.5,0.2,0"]) + "\n")
    assert validate_batch(read_batch(good, spec), spec).success  # the float32 maximum itself is fine

    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([HEADER, *GOOD_ROWS, f"5.0,3.4,{value},0.2,0"]) + "\n")
    report = validate_batch(read_batch(bad, spec), spec)
    assert not report.success
    assert any("petal_length" in problem for problem in report.problems), report.problems

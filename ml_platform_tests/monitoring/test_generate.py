"""The traffic generator: drifted feature rows, and prediction logs in serving's format."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ml_platform.monitoring.generate import drifted_rows, main
from ml_platform.spec import load_spec, parse_spec
from ml_platform_tests.monitoring.conftest import ModelStore, ServedLogs

SPEC = load_spec("iris")


def test_rows_without_shift_are_drawn_from_the_training_data() -> None:
    rows = drifted_rows(SPEC, 300, seed=3)
    source = pd.read_csv(SPEC.bootstrap_path())
    assert list(rows.columns) == SPEC.columns and len(rows) == 300
    known = set(map(tuple, source[SPEC.columns].to_numpy().tolist()))
    assert all(tuple(r) in known for r in rows.to_numpy().tolist())
    assert drifted_rows(SPEC, 300, seed=3).equals(rows), "seeded"


def test_shift_moves_the_chosen_features_by_standard_deviations() -> None:
    base = drifted_rows(SPEC, 2000, seed=4)
    moved = drifted_rows(SPEC, 2000, 1.5, features=["petal_length", "petal_width"], seed=4)
    source = pd.read_csv(SPEC.bootstrap_path())
    for name in ("petal_length", "petal_width"):
        expected = 1.5 * source[name].std(ddof=0)
        assert (moved[name] - base[name]).mean() == pytest.approx(expected, rel=0.05)
    for name in ("sepal_length", "sepal_width", "target"):
        assert moved[name].equals(base[name])
    far = drifted_rows(SPEC, 500, 50.0, seed=4)
    assert far[SPEC.numeric_features].max().max() <= 10.0, "clipped to the spec's range"
    with pytest.raises(ValueError, match="unknown features"):
        drifted_rows(SPEC, 5, 1.0, features=["petal_colour"])


def test_categorical_features_rotate_through_the_spec_categories() -> None:
    spec = parse_spec(
        {
            "name": "shop",
            "features": [
                {"name": "amount", "type": "float"},
                {"name": "channel", "type": "category", "categories": ["web", "app", "store"]},
            ],
            "target": {"name": "bought", "classes": [0, 1]},
            "model": {"name": "shop-model", "estimator": "sklearn.linear_model.LogisticRegression"},
        }
    )
    source = pd.DataFrame({"amount": [1.0, 2.0, 3.0] * 10, "channel": ["web"] * 30, "bought": [0, 1, 0] * 10})
    rows = drifted_rows(spec, 400, 2.0, features=["channel"], source=source, seed=1)
    assert set(rows["channel"]) == {"app"}
    half = drifted_rows(spec, 400, 1.0, features=["channel"], source=source, seed=1)
    assert 0.3 < (half["channel"] == "app").mean() < 0.7
    assert half["amount"].isin([1.0, 2.0, 3.0]).all()


@pytest.mark.slow
def test_cli_writes_logs_in_the_format_serving_writes(
    monitoring_env: Path,
    model_store: ModelStore,
    served_logs: ServedLogs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log_dir = tmp_path / "logs"
    code = main(
        ["--date", "2026-01-30", "--days", "2", "--rows", "40", "--shift", "1.0", "--feedback", "0.5",
         "--log-dir", str(log_dir), "--model-uri", f"models:/iris-random-forest/{model_store.version}"]
    )  # fmt: skip
    assert code == 0
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["date"] for s in summaries] == ["2026-01-30", "2026-01-31"]
    assert sorted(p.name for p in log_dir.iterdir()) == ["date=2026-01-30", "date=2026-01-31"]

    predictions = [
        json.loads(x)
        for p in log_dir.glob("date=2026-01-30/predictions-stable-*.jsonl")
        for x in p.read_text().splitlines()
    ]
    feedback = [
        json.loads(x)
        for p in log_dir.glob("date=2026-01-30/feedback-stable-*.jsonl")
        for x in p.read_text().splitlines()
    ]
    assert len(predictions) == 40 and 0 < len(feedback) < 40
    # Same fields, same nesting, same types as the lines a real serving process wrote.
    served_pred, served_fb = served_logs.sample_prediction, served_logs.sample_feedback
    for line in predictions:
        assert set(line) == set(served_pred)
        assert set(line["features"]) == set(served_pred["features"])  # type: ignore[arg-type]
        assert set(line["probabilities"]) == set(served_pred["probabilities"])  # type: ignore[arg-type]
        assert {k: type(v) for k, v in line.items()} == {k: type(v) for k, v in served_pred.items()}
        assert line["timestamp"].startswith("2026-01-30T") and line["timestamp"].endswith("Z")
        assert line["model_version"] == model_store.version
    for line in feedback:
        assert set(line) == set(served_fb)
        assert line["correct"] == (line["label"] == line["prediction"])
    assert {line["request_id"] for line in feedback} <= {line["request_id"] for line in predictions}

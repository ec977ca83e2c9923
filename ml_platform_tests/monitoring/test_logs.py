"""Reading one day of a model's prediction log, joining feedback, and per-version reports (no servers needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ml_platform.monitoring import report as drift_report_module
from ml_platform.monitoring.decisions import INSUFFICIENT_DATA, JUDGED, NO_REFERENCE, DriftThresholds
from ml_platform.monitoring.logs import feedback_by_version, join_window, read_day, rows_by_version
from ml_platform.spec import load_spec

DAY = "2026-03-14"
SPEC = load_spec("iris")


IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
PROBABILITIES = {"setosa": 0.9, "versicolor": 0.1, "virginica": 0.0}


def _request(
    request_id: str,
    rows: int = 1,
    version: str = "1",
    model: str = "iris-random-forest",
    platform: str | None = "iris",
    **features: Any,
) -> dict:
    """A prediction line as serving writes it: one request, its rows as columns (``platform`` None: no model field)."""
    columns = {name: [value] * rows for name, value in IRIS.items()} | features
    named = {"model": platform} if platform is not None else {}
    return named | {
        "event": "prediction",
        "request_id": request_id,
        "timestamp": f"{DAY}T10:00:00.000000Z",
        "model_name": model,
        "model_version": version,
        "track": "stable",
        "rows": rows,
        "features": columns,
        "predictions": [0] * rows,
        "probabilities": {label: [p] * rows for label, p in PROBABILITIES.items()},
        "latency_ms": 1.5,
    }


def _legacy_row(request_id: str, row: int) -> dict:
    """A line of the one-line-per-row format serving wrote before it logged whole requests."""
    return {
        "event": "prediction",
        "request_id": request_id,
        "row": row,
        "timestamp": f"{DAY}T09:00:00.000000Z",
        "model_name": "iris-random-forest",
        "model_version": "1",
        "track": "stable",
        "features": IRIS,
        "prediction": 0,
        "probabilities": PROBABILITIES,
        "latency_ms": 2.5,
    }


def _feedback(
    request_id: str, row: int, label: int, prediction: int = 0, version: str = "1", platform: str | None = "iris"
) -> dict:
    named = {"model": platform} if platform is not None else {}
    return named | {
        "event": "feedback",
        "request_id": request_id,
        "row": row,
        "timestamp": f"{DAY}T10:00:05.000000Z",
        "label": label,
        "prediction": prediction,
        "correct": label == prediction,
        "model_version": version,
        "track": "stable",
    }


def _write(path: Path, rows: list[dict], tail: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)


def test_reading_a_day_reads_only_that_days_folder(tmp_path: Path) -> None:
    _write(tmp_path / "iris" / f"date={DAY}" / "predictions-stable-1.jsonl", [_request("a", rows=3)])
    _write(tmp_path / "iris" / f"date={DAY}" / "predictions-canary-2.jsonl", [_request("b", version="2")])
    _write(tmp_path / "iris" / f"date={DAY}" / "feedback-stable-1.jsonl", [_feedback("a", 0, 0)])
    for other in ("2026-03-13", "2026-03-15"):
        _write(
            tmp_path / "iris" / f"date={other}" / "predictions-stable-1.jsonl",
            [_request(f"x{i}", 5) for i in range(10)],
        )
        _write(tmp_path / "iris" / f"date={other}" / "feedback-stable-1.jsonl", [_feedback("x0", 0, 1)])

    day = read_day(str(tmp_path), DAY, SPEC, model="iris")

    read = day.prediction_stats.files + day.feedback_stats.files
    assert read and all(f"/date={DAY}/" in path for path in read)
    assert len(day.predictions) == 4 and len(day.feedback) == 1
    assert rows_by_version(day.predictions) == {"1": 3, "2": 1}
    assert list(day.predictions.columns[:7]) == [
        "model",
        "request_id",
        "row",
        "timestamp",
        "model_name",
        "model_version",
        "track",
    ]
    assert day.predictions["petal_length"].dtype == "float64"
    assert {"proba_setosa", "proba_versicolor", "proba_virginica"} <= set(day.predictions.columns)


def test_requests_explode_into_numbered_rows(tmp_path: Path) -> None:
    """Each request's columns become rows 0..rows-1 carrying the request's id, time, model and latency."""
    first = _request("a", rows=3, petal_length=[1.0, 2.0, 3.0])
    first["predictions"] = [0, 1, 2]
    first["probabilities"] = {"setosa": [0.8, 0.1, 0.0], "versicolor": [0.2, 0.9, 0.3], "virginica": [0.0, 0.0, 0.7]}
    second = _request("b", rows=2, version="2") | {"probabilities": None, "latency_ms": 4.0}
    _write(tmp_path / "iris" / f"date={DAY}" / "predictions-stable-1.jsonl", [first, second])

    day = read_day(str(tmp_path), DAY, SPEC, model="iris")

    frame = day.predictions
    assert day.prediction_stats.skipped_lines == 0
    assert list(zip(frame["request_id"], frame["row"], strict=True)) == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
    ]
    assert frame["petal_length"].tolist() == [1.0, 2.0, 3.0, 1.4, 1.4]
    assert frame["prediction"].tolist() == [0, 1, 2, 0, 0]
    assert frame["proba_virginica"].tolist()[:3] == [0.0, 0.0, 0.7]
    assert frame["proba_setosa"].iloc[3:].isna().all(), "a request without probabilities keeps its rows"
    assert frame["model_version"].astype(str).tolist() == ["1", "1", "1", "2", "2"]
    assert frame["latency_ms"].tolist() == [1.5, 1.5, 1.5, 4.0, 4.0]


def test_a_missing_day_is_an_empty_window(tmp_path: Path) -> None:
    day = read_day(str(tmp_path), DAY, SPEC, model="iris")
    window = join_window(day, SPEC)
    assert window.frame.empty and window.feedback.empty
    assert day.prediction_stats.files == []


def test_requests_whose_columns_disagree_with_their_row_count_are_skipped(tmp_path: Path) -> None:
    short_feature = _request("short", rows=2, petal_width=[0.2])
    short_predictions = _request("fewer", rows=2) | {"predictions": [0]}
    no_id = _request("x", rows=2) | {"request_id": None}
    other_event = {"event": "heartbeat", "request_id": "h"}
    lines = [_request("a", rows=2), short_feature, short_predictions, no_id, other_event, _request("b", rows=3)]
    _write(tmp_path / "iris" / f"date={DAY}" / "predictions-stable-1.jsonl", lines)

    day = read_day(str(tmp_path), DAY, SPEC, model="iris")

    assert sorted(set(day.predictions["request_id"])) == ["a", "b"] and len(day.predictions) == 5
    assert day.prediction_stats.skipped_lines == 3, "other events are left out without counting as bad"


def test_bad_lines_are_skipped_and_a_line_being_written_is_ignored(tmp_path: Path) -> None:
    good = [_request("a", rows=2), _request("b", rows=2), _request("c", rows=2, petal_width=[0.1])]
    path = tmp_path / "iris" / f"date={DAY}" / "predictions-stable-1.jsonl"
    path.parent.mkdir(parents=True)
    lines = [json.dumps(r).encode() for r in good]
    lines.insert(1, b'{"event": "prediction", "request_id": ')  # torn line from a crash
    lines.insert(2, b"[1, 2, 3]")
    path.write_bytes(b"\n".join(lines) + b"\n" + b'{"event": "prediction", "request_id": "late"')

    day = read_day(str(tmp_path), DAY, SPEC, model="iris")

    assert day.predictions["request_id"].tolist() == ["a", "a", "b", "b"]
    assert day.prediction_stats.skipped_lines == 3
    assert day.prediction_stats.partial_tail_bytes > 0


def test_lines_of_the_earlier_one_line_per_row_format_are_still_read(tmp_path: Path) -> None:
    folder = tmp_path / "iris" / f"date={DAY}"
    _write(folder / "predictions-stable-1.jsonl", [_legacy_row("old", 0), _legacy_row("old", 1)])
    _write(folder / "predictions-stable-2.jsonl", [_request("new", rows=2)])

    day = read_day(str(tmp_path), DAY, SPEC, model="iris")

    frame = day.predictions.sort_values(["request_id", "row"])
    assert list(zip(frame["request_id"], frame["row"], strict=True)) == [("new", 0), ("new", 1), ("old", 0), ("old", 1)]
    assert frame["proba_setosa"].tolist() == [0.9] * 4 and day.prediction_stats.skipped_lines == 0


def test_integer_and_string_values_are_read_with_the_spec_types(tmp_path: Path) -> None:
    _write(
        tmp_path / "iris" / f"date={DAY}" / "predictions-stable-1.jsonl",
        [_request("a", rows=2, petal_length=[5, "4.5"])],
    )
    day = read_day(str(tmp_path), DAY, SPEC, model="iris")
    assert day.predictions["petal_length"].tolist() == [5.0, 4.5]


def test_feedback_joins_on_request_and_row(tmp_path: Path) -> None:
    folder = tmp_path / "iris" / f"date={DAY}"
    _write(
        folder / "predictions-stable-1.jsonl",
        [_request("a", rows=2), _request("b", version="2"), _request("o", model="other")],
    )
    _write(
        folder / "feedback-stable-1.jsonl",
        [
            _feedback("a", 0, 2),  # superseded by the next event for the same row
            _feedback("a", 0, 0),
            _feedback("b", 0, 1, version="2"),
            _feedback("yesterday", 3, 0),  # its prediction was logged on another day
        ],
    )
    window = join_window(read_day(str(tmp_path), DAY, SPEC, model="iris"), SPEC)

    frame = window.frame.set_index(["request_id", "row"])
    assert len(frame) == 3 and window.other_model_rows == 1
    assert frame.loc[("a", 0), "label"] == 0 and bool(frame.loc[("a", 0), "correct"]) is True
    assert pd.isna(frame.loc[("a", 1), "label"]) and pd.isna(frame.loc[("a", 1), "correct"])
    assert bool(frame.loc[("b", 0), "correct"]) is False
    assert window.feedback_joined == 2 and window.feedback_unmatched == 1
    # live accuracy counts the day's feedback events per version, joined or not
    assert feedback_by_version(window.feedback) == {"1": (2, 2), "2": (0, 1)}


def _snapshot(version: str, frame: pd.DataFrame) -> pd.DataFrame:
    snapshot = frame.copy()
    snapshot["prediction"] = snapshot["target"]
    snapshot["model_name"], snapshot["model_version"] = "iris-random-forest", version
    return snapshot


def _window(rows: pd.DataFrame, version: str) -> pd.DataFrame:
    frame = rows[SPEC.feature_names].copy()
    frame["prediction"] = rows["target"].to_numpy()
    frame["model_version"] = version
    return frame


def test_each_version_is_judged_against_its_own_snapshot_on_object_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots and reports on an fsspec URI (memory://); v1 and v2 judged, v3 too small, v4 without snapshot."""
    from upath import UPath

    from ml_platform.monitoring.generate import drifted_rows

    monkeypatch.setenv("REFERENCE_DATASET_URI", "memory://snapshots")
    monkeypatch.setenv("DRIFT_REPORTS_URI", "memory://reports")
    base = pd.read_csv(SPEC.bootstrap_path())
    for version, frame in (("1", base), ("2", drifted_rows(SPEC, 150, 2.0, seed=5))):
        target = UPath(f"memory://snapshots/iris-random-forest/v{version}/reference.parquet")
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as handle:
            _snapshot(version, frame).to_parquet(handle)

    window = pd.concat(
        [
            _window(drifted_rows(SPEC, 120, seed=1), "1"),  # like v1's training data
            _window(drifted_rows(SPEC, 60, seed=2), "2"),  # unlike v2's (shifted) training data
            _window(drifted_rows(SPEC, 5, seed=3), "3"),
            _window(drifted_rows(SPEC, 40, seed=4), "4"),
        ],
        ignore_index=True,
    )
    thresholds = DriftThresholds.from_spec(SPEC)
    report = drift_report_module.build_report(
        SPEC, DAY, window, {"1": (110, 120)}, thresholds, model="iris", client_factory=None, max_rows=5000
    )

    versions = report["versions"]
    assert report["model"] == "iris" and report["headline_version"] == "1" and report["status"] == JUDGED
    assert [versions[v]["status"] for v in "1234"] == [JUDGED, JUDGED, INSUFFICIENT_DATA, NO_REFERENCE]
    assert versions["1"]["drift_detected"] is False and versions["2"]["drift_detected"] is True
    assert report["drift_detected"] is True, "any judged version drifting flags the report"
    assert versions["1"]["live_accuracy"] == pytest.approx(110 / 120)
    assert versions["1"]["training_accuracy_source"] == "reference_snapshot_train_split"
    html = UPath(versions["2"]["evidently"]["html_uri"])
    assert str(html).startswith("memory://reports/iris/date=") and html.exists()
    assert versions["3"]["evidently"] is None and versions["4"]["evidently"] is None
    assert "v2" in drift_report_module.versions_markdown(report)

"""Monitoring is namespaced by model: each model reads its own folder and only lines naming it, pushes its own group.

Log lines are written as serving writes them (see test_logs.py); the
Pushgateway is the real ``prometheus-pushgateway``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ml_platform.monitoring.backends import DriftPusher, PredictionLogSource
from ml_platform.monitoring.logs import feedback_by_version, join_window, read_day
from ml_platform.monitoring.paths import prediction_log_dir, report_folder_uri, window_uri
from ml_platform.spec import load_spec
from ml_platform_tests.monitoring.helpers import scrape, series
from ml_platform_tests.monitoring.test_logs import DAY, _feedback, _request

IRIS = load_spec("iris")


def _write(path: Path, lines: list[dict[str, Any]], raw: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in lines) + raw)


def _day(root: Path, model: str) -> Path:
    return root / model / f"date={DAY}"


@pytest.mark.parametrize("torn", [False, True], ids=["arrow", "line-by-line"])
def test_lines_of_another_model_in_irises_folder_are_ignored_and_counted(tmp_path: Path, torn: bool) -> None:
    """Both parsers (a torn line forces the line-by-line one) drop other models' lines and count them."""
    raw = b'{"event": "prediction", "request_id": \n' if torn else b""
    folder = _day(tmp_path, "iris")
    _write(folder / "predictions-stable-1.jsonl", [_request("a", rows=2), _request("w", platform="wine")], raw)
    _write(
        folder / "feedback-stable-1.jsonl",
        [_feedback("a", 0, 0), _feedback("a", 1, 0)] + [_feedback(f"w{i}", 0, 1, platform="wine") for i in range(5)],
        raw,
    )

    day = read_day(str(tmp_path), DAY, IRIS, model="iris")

    assert day.predictions["request_id"].tolist() == ["a", "a"]
    assert day.prediction_stats.other_model_lines == 1
    assert day.feedback["request_id"].tolist() == ["a", "a"]
    assert day.feedback_stats.other_model_lines == 5
    assert day.prediction_stats.skipped_lines == day.feedback_stats.skipped_lines == (1 if torn else 0)
    assert feedback_by_version(join_window(day, IRIS).feedback) == {"1": (2, 2)}, "wine's labels never count"


def test_a_file_holding_only_another_models_lines_reads_as_empty(tmp_path: Path) -> None:
    _write(_day(tmp_path, "iris") / "predictions-stable-1.jsonl", [_request("w", platform="wine")])
    _write(_day(tmp_path, "iris") / "feedback-stable-1.jsonl", [_feedback("w", 0, 1, platform="wine")])
    day = read_day(str(tmp_path), DAY, IRIS, model="iris")
    assert day.predictions.empty and day.feedback.empty
    assert (day.prediction_stats.other_model_lines, day.feedback_stats.other_model_lines) == (1, 1)


def test_lines_without_a_model_count_only_for_the_default_model(tmp_path: Path) -> None:
    """Older lines (no ``model`` field) are the default model's (iris); any other model ignores and counts them."""
    for model in ("iris", "wine"):
        _write(_day(tmp_path, model) / "feedback-stable-1.jsonl", [_feedback("old", 0, 0, platform=None)])
        _write(_day(tmp_path, model) / "predictions-stable-1.jsonl", [_request("old", platform=None)])

    iris = read_day(str(tmp_path), DAY, IRIS, model="iris")
    wine = read_day(str(tmp_path), DAY, IRIS, model="wine")  # iris's spec: only the model filter is under test

    assert iris.feedback["request_id"].tolist() == ["old"] and iris.predictions["request_id"].tolist() == ["old"]
    assert (iris.feedback_stats.legacy_lines, iris.prediction_stats.legacy_lines) == (1, 1)
    assert wine.feedback.empty and wine.predictions.empty
    assert (wine.feedback_stats.unattributed_lines, wine.prediction_stats.unattributed_lines) == (1, 1)
    assert wine.feedback_stats.legacy_lines == 0
    explicit = read_day(str(tmp_path), DAY, IRIS, model="iris", accept_legacy=False)
    assert explicit.feedback.empty and explicit.feedback_stats.unattributed_lines == 1


def test_the_single_model_layout_of_an_existing_home_is_read_for_the_default_model_only(tmp_path: Path) -> None:
    """``<root>/date=<day>/`` (before logs were per model) still feeds iris's windows, never wine's."""
    _write(tmp_path / f"date={DAY}" / "feedback-stable-1.jsonl", [_feedback("old", 0, 0, platform=None)])
    _write(_day(tmp_path, "iris") / "feedback-stable-2.jsonl", [_feedback("new", 0, 0)])

    source = PredictionLogSource(str(tmp_path))
    iris = source.read_day("iris", DAY, IRIS)
    wine = source.read_day("wine", DAY, IRIS)

    assert sorted(iris.feedback["request_id"]) == ["new", "old"]
    assert wine.feedback.empty and wine.feedback_stats.files == []
    assert iris.folder == f"{tmp_path}/iris/date={DAY}" and source.root("wine") == f"{tmp_path}/wine"


def test_every_monitoring_location_is_per_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PREDICTION_LOG_ROOT", str(tmp_path / "logs"))
    monkeypatch.setenv("PRODUCTION_WINDOWS_URI", "memory://windows")
    monkeypatch.setenv("DRIFT_REPORTS_URI", "s3://bucket/reports/")
    assert prediction_log_dir("wine") == f"{tmp_path}/logs/wine"
    assert window_uri("wine", DAY) == f"memory://windows/wine/date={DAY}/window.parquet"
    assert report_folder_uri("iris", DAY) == f"s3://bucket/reports/iris/date={DAY}"
    with pytest.raises(ValueError, match="not a valid model name"):
        prediction_log_dir("../iris")


def _report(model: str, version: str, rows: int) -> dict[str, Any]:
    """The part of a drift report the gauges come from: one version too small to judge."""
    result = {"rows": rows, "feedback_rows": 10, "live_accuracy": 0.9, "status": "insufficient_data"}
    return {"model": model, "dataset": "iris", "versions": {version: result}}


def test_each_model_has_its_own_pushgateway_group(pushgateway_url: str) -> None:
    """Two models (sharing a dataset name and a version number) push apart; a push replaces only its own group."""
    pusher = DriftPusher(pushgateway_url)
    assert pusher.push("iris", _report("iris", "3", 100)).startswith("pushed")
    assert pusher.push("iris_v2", _report("iris_v2", "3", 40)).startswith("pushed")

    rows = series(scrape(pushgateway_url), "ml_platform_drift_window_rows")
    by_model = {dict(labels)["model"]: (dict(labels)["model_version"], value) for labels, value in rows.items()}
    assert by_model == {"iris": ("3", 100.0), "iris_v2": ("3", 40.0)}

    # iris's next report (a newer version) replaces iris's group whole and leaves iris_v2's alone.
    assert pusher.push("iris", _report("iris", "4", 7)).startswith("pushed")
    rows = series(scrape(pushgateway_url), "ml_platform_drift_window_rows")
    assert sorted((dict(lbl)["model"], dict(lbl)["model_version"], v) for lbl, v in rows.items()) == [
        ("iris", "4", 7.0),
        ("iris_v2", "3", 40.0),
    ]
    pushed = {dict(lbl)["model"] for lbl in series(scrape(pushgateway_url), "push_time_seconds")}
    assert pushed == {"iris", "iris_v2"}, "one group per model"

    refused = pusher.push("iris", _report("wine", "1", 5))
    assert refused.startswith("refused") and "wine" not in {
        dict(lbl)["model"] for lbl in series(scrape(pushgateway_url), "ml_platform_drift_window_rows")
    }


def test_the_generator_refuses_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    from ml_platform.monitoring.generate import main

    assert main(["--model", "nope", "--date", DAY]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err

"""The platform's own smoke-test requests never reach a production window.

A real serving process answers production traffic and the rollout's real smoke test
(:func:`ml_platform.deployment.smoke.smoke_test`, which marks its requests
``X-ML-Platform-Traffic: smoke``); the real log files then feed ``read_day`` and the real
``production_window`` asset. Smoke rows are left out (and counted), on both the Arrow and the
line-by-line read paths; a header value other than ``smoke`` is production traffic.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import httpx
import pytest

from ml_platform.deployment.smoke import smoke_rows, smoke_test
from ml_platform.monitoring.logs import read_day
from ml_platform.monitoring.traffic import TRAFFIC_HEADER
from ml_platform.spec import load_spec
from ml_platform_tests.monitoring.conftest import ModelStore
from ml_platform_tests.monitoring.helpers import (
    MODEL_NAME,
    send_traffic,
    start_serving,
    values,
    wait_for_rows,
    wait_ready,
)

PRODUCTION_ROWS = 30
SMOKE_ROWS = 12


def _serve_and_smoke(model_store: ModelStore, workdir: Path) -> tuple[Path, str]:
    """Production traffic, one smoke test and one request with a foreign header value; the log root and day."""
    from ml_platform.monitoring.generate import drifted_rows

    spec = load_spec("iris")
    serving = start_serving("smoke", workdir, model_store.tracking_uri, f"models:/{MODEL_NAME}/{model_store.version}")
    try:
        wait_ready(serving)
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        send_traffic(serving, drifted_rows(spec, PRODUCTION_ROWS, seed=3), spec, "prod")
        rows = smoke_rows(spec, model_store.snapshot_uri, SMOKE_ROWS)
        result = smoke_test(serving.url, "stable", model_store.version, rows, list(spec.target.classes))
        assert result.passed, result.detail
        record = rows.records[0]
        other = httpx.post(
            f"{serving.url}/predict",
            json={"records": [record]},
            headers={TRAFFIC_HEADER: "totally-not-smoke", "X-Request-ID": "prod-foreign-header"},
            timeout=30,
        )
        assert other.status_code == 200
        wait_for_rows(serving.log_dir, "date=*/predictions-*.jsonl", PRODUCTION_ROWS + SMOKE_ROWS + 1)
    finally:
        serving.process.stop()
    return serving.log_root, day


@pytest.fixture(scope="module")
def smoke_logs(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _serve_and_smoke(model_store, tmp_path_factory.mktemp("smoke-traffic"))


def test_serving_marks_only_smoke_requests(smoke_logs: tuple[Path, str]) -> None:
    root, day = smoke_logs
    lines = [
        json.loads(line)
        for path in (root / "iris" / f"date={day}").glob("predictions-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    smoke = [line for line in lines if line.get("traffic") == "smoke"]
    assert len(smoke) == 1 and smoke[0]["request_id"].startswith("smoke-") and smoke[0]["rows"] == SMOKE_ROWS
    others = [line for line in lines if "traffic" not in line]
    assert len(others) == len(lines) - 1  # production lines carry no traffic field at all
    assert any(line["request_id"] == "prod-foreign-header" for line in others)


@pytest.mark.parametrize("path", ["arrow", "line-by-line"])
def test_smoke_rows_never_reach_a_production_window(smoke_logs: tuple[Path, str], tmp_path: Path, path: str) -> None:
    root, day = smoke_logs
    spec = load_spec("iris")
    if path == "line-by-line":  # a malformed line makes the Arrow parse fail: the slow path reads the file
        root = Path(shutil.copytree(root, tmp_path / "copy"))
        for log in (root / "iris" / f"date={day}").glob("predictions-*.jsonl"):  # one file per worker
            with log.open("ab") as handle:
                handle.write(b"{not json\n")
    window = read_day(str(root), day, spec, model="iris")
    assert len(window.predictions) == PRODUCTION_ROWS + 1
    assert not window.predictions["request_id"].astype(str).str.startswith("smoke-").any()
    assert window.prediction_stats.smoke_lines == 1
    if path == "line-by-line":
        assert window.prediction_stats.skipped_lines >= 1  # the slow path did read it
    everything = read_day(str(root), day, spec, model="iris", include_smoke=True)
    assert len(everything.predictions) == PRODUCTION_ROWS + 1 + SMOKE_ROWS
    assert everything.prediction_stats.smoke_lines == 0


def test_production_window_asset_excludes_and_counts_smoke_rows(
    smoke_logs: tuple[Path, str], monitoring_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, day = smoke_logs
    monkeypatch.setenv("PREDICTION_LOG_ROOT", str(root))
    from ml_platform.definitions import build_defs

    defs = build_defs()
    key = dg.AssetKey(["iris", "production_window"])
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [defs.get_assets_def(key)], partition_key=day, instance=instance, resources=dict(defs.resources or {})
        )
    (event,) = result.get_asset_materialization_events()
    metadata = values(dict(event.materialization.metadata))
    assert metadata["dagster/row_count"] == PRODUCTION_ROWS + 1
    assert metadata["smoke_requests_excluded"] == 1

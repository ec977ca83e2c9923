"""The traffic simulator against a real serving process: drifted rows, and its counts on Ctrl-C.

``--shift`` sends drifted rows (checked in serving's real prediction log); a real SIGINT to a
simulator subprocess stops it and still prints the counts so far.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from ml_platform.monitoring.logs import read_day
from ml_platform.simulate import main as simulate_main
from ml_platform.spec import load_spec
from ml_platform_tests.conftest import REPO_ROOT
from ml_platform_tests.monitoring.conftest import ModelStore
from ml_platform_tests.monitoring.helpers import MODEL_NAME, Serving, count_logged_rows, start_serving, wait_ready

SHIFTED = ("petal_length", "petal_width")


@pytest.fixture(scope="module")
def server(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    serving = start_serving(
        "simulated",
        tmp_path_factory.mktemp("simulate"),
        model_store.tracking_uri,
        f"models:/{MODEL_NAME}/{model_store.version}",
    )
    try:
        wait_ready(serving)
        yield serving
    finally:
        serving.process.stop()


def test_shift_sends_drifted_rows(server: Serving, capsys: pytest.CaptureFixture) -> None:
    import pandas as pd

    spec = load_spec("iris")
    before = count_logged_rows(server.log_dir, "date=*/predictions-*.jsonl")
    args = ["--model", "iris", "--url", server.url, "--rate", "40", "--duration", "2", "--json"]
    code = simulate_main([*args, "--shift", "3", "--features", ",".join(SHIFTED)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["predictions_ok"] >= 20 and report["predictions_failed"] == 0
    assert report["feedback_ok"] == report["predictions_ok"]
    deadline = time.monotonic() + 30
    while count_logged_rows(server.log_dir, "date=*/predictions-*.jsonl") < before + report["predictions_ok"]:
        assert time.monotonic() < deadline, "serving did not log the simulated rows"
        time.sleep(0.2)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    logged = read_day(str(server.log_root), day, spec, model="iris").predictions
    training = pd.read_csv(spec.bootstrap_path())
    for feature in SHIFTED:  # moved by ~3 standard deviations (clipped to the spec's range)
        assert logged[feature].mean() > training[feature].mean() + training[feature].std(), feature
    assert abs(logged["sepal_width"].mean() - training["sepal_width"].mean()) < training["sepal_width"].std()
    with pytest.raises(SystemExit):
        simulate_main([*args, "--shift", "1", "--features", "no_such_feature"])
    assert "not features of iris" in capsys.readouterr().err


def test_ctrl_c_prints_the_counts_so_far(server: Serving) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "ml_platform.simulate", "--model", "iris", "--url", server.url]
    process = subprocess.Popen(
        [*command, "--rate", "20", "--duration", "600", "--json"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    before = count_logged_rows(server.log_dir, "date=*/predictions-*.jsonl")
    deadline = time.monotonic() + 60
    try:
        while count_logged_rows(server.log_dir, "date=*/predictions-*.jsonl") < before + 10:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the simulator sent nothing"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 130, err.decode()
    assert b"interrupted after" in err
    report = json.loads(out)
    assert report["predictions_ok"] >= 10 and report["predictions_failed"] == 0
    assert 0 < report["seconds"] < 600

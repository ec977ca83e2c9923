"""Two API server processes sharing the port (``API_SERVERS=2``): one server, whichever process answers.

A real ``python -m serving`` with two API server processes and one inference worker. Requests go over
separate connections (the kernel hands each to one of the processes); which process answered is read from
the per-process log files (``predictions-<track>-<pid>.jsonl``, ``feedback-<track>-<pid>.jsonl``).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_platform_tests.serving.conftest import ADMIN_TOKEN
from ml_platform_tests.serving.helpers import (
    MODEL_NAME,
    MlflowStore,
    ServingProcess,
    metric_sum,
    read_jsonl,
    running,
    sigterm_under_load,
)

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.9, 3.1, 5.4, 2.1]
CONNECTIONS = 8


@pytest.fixture(scope="module")
def two_api_servers(
    mlflow_store: MlflowStore, set_alias: Callable[[str, str], None], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServingProcess]:
    set_alias("apiservers", mlflow_store.onnx_version)
    server = ServingProcess(
        "apiservers",
        tmp_path_factory.mktemp("apiservers"),
        {
            "MLFLOW_TRACKING_URI": mlflow_store.tracking_uri,
            "MODEL_URI": f"models:/{MODEL_NAME}@apiservers",
            "API_SERVERS": "2",
            "WORKERS": "1",
            "ADMIN_API_TOKEN": ADMIN_TOKEN,
            # FEEDBACK_LEDGER unset: the server must share one ledger between its API processes by itself
        },
    )
    with running(server):
        yield server


def _post(url: str, body: dict[str, Any], request_id: str | None = None) -> httpx.Response:
    """One request on its own connection (a new connection may reach either API process)."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    return httpx.post(url, json=body, headers=headers, timeout=30)


def _concurrently(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        return list(pool.map(lambda call: call(), calls))


def _answered_by(log_dir: Path, stem: str) -> dict[str, int]:
    """request_id -> pid of the process whose log file holds its line."""
    owner = {}
    for path in log_dir.glob(f"date=*/{stem}-*.jsonl"):
        pid = int(path.stem.rsplit("-", 1)[1])
        for row in read_jsonl(path.parent, path.name):
            owner[row["request_id"]] = pid
    return owner


def _wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s")


def _predict_many(server: ServingProcess, count: int, prefix: str) -> dict[str, dict[str, Any]]:
    """``count`` single-row predictions over separate connections, until both API processes answered some."""
    answers: dict[str, dict[str, Any]] = {}
    ids = [f"{prefix}-{uuid.uuid4().hex[:10]}" for _ in range(count)]
    features = [SETOSA if i % 2 == 0 else VIRGINICA for i in range(count)]
    responses = _concurrently(
        [
            lambda rid=rid, row=row: _post(f"{server.url}/predict", {"features": [row]}, rid)
            for rid, row in zip(ids, features, strict=True)
        ]
    )
    for rid, response in zip(ids, responses, strict=True):
        assert response.status_code == 200, response.text
        answers[rid] = response.json()
    return answers


def test_feedback_answered_by_one_api_process_counts_once_on_the_other(two_api_servers: ServingProcess):
    server = two_api_servers
    before = server.metrics()
    answers = _predict_many(server, 80, "cross")
    predicted_by = _wait_for(
        lambda: (owners := _answered_by(server.log_dir, "predictions")) and set(answers) <= set(owners) and owners,
        20,
        "every prediction in a log file",
    )
    assert len({predicted_by[rid] for rid in answers}) == 2, "both API processes should have answered predictions"

    # ground truth: the first 30 are labelled correctly, the rest with the other class
    labels = {
        rid: (a["predictions"][0] if i < 30 else 2 - a["predictions"][0]) for i, (rid, a) in enumerate(answers.items())
    }
    feedback = {
        rid: {"request_id": rid, "feedback_token": a["feedback_token"], "labels": [labels[rid]]}
        for rid, a in answers.items()
    }
    first = _concurrently([lambda body=body: _post(f"{server.url}/feedback", body) for body in feedback.values()])
    assert [r.status_code for r in first] == [200] * len(feedback), [r.text for r in first if r.status_code != 200]

    labelled_by = _wait_for(
        lambda: (owners := _answered_by(server.log_dir, "feedback")) and set(answers) <= set(owners) and owners,
        20,
        "every feedback in a log file",
    )
    crossed = [rid for rid in answers if labelled_by[rid] != predicted_by[rid]]
    assert crossed, "some feedback should have reached the API process that did not answer the prediction"
    lines = Counter(row["request_id"] for row in read_jsonl(server.log_dir, "date=*/feedback-*.jsonl"))
    assert all(lines[rid] == 1 for rid in answers)

    # a replay is refused whichever process it reaches (the ledger is shared), and counts nothing
    replays = _concurrently([lambda body=body: _post(f"{server.url}/feedback", body) for body in feedback.values()])
    assert [r.status_code for r in replays] == [409] * len(feedback)

    def counted() -> dict[str, float] | None:
        samples = server.metrics()
        got = {
            outcome: metric_sum(samples, "ml_serving_feedback_total", outcome=outcome)
            - metric_sum(before, "ml_serving_feedback_total", outcome=outcome)
            for outcome in ("correct", "incorrect")
        }
        got["predictions"] = metric_sum(samples, "ml_serving_predictions_total") - metric_sum(
            before, "ml_serving_predictions_total"
        )
        got["accuracy"] = metric_sum(samples, "ml_serving_live_accuracy")
        return got if got["predictions"] == len(answers) else None

    # pending prediction counts of the process that did not serve the scrape arrive within its flush interval
    got = _wait_for(counted, 10, "every prediction counted in /metrics")
    assert got["correct"] == 30
    assert got["incorrect"] == len(answers) - 30
    total_correct = metric_sum(server.metrics(), "ml_serving_feedback_total", outcome="correct")
    total = metric_sum(server.metrics(), "ml_serving_feedback_total")
    assert got["accuracy"] == pytest.approx(total_correct / total)  # from the merged counters, not one process
    # every scrape, whichever process serves it, reads the same merged numbers
    scrapes = _concurrently([lambda: httpx.get(f"{server.url}/metrics", timeout=10) for _ in range(8)])
    assert len({r.text.count("ml_serving_feedback_total") for r in scrapes}) == 1


def test_admin_reload_swaps_the_version_in_every_api_process(
    two_api_servers: ServingProcess, mlflow_store: MlflowStore, set_alias: Callable[[str, str], None]
):
    server = two_api_servers
    current = httpx.get(f"{server.url}/health").json()["model"]["version"]
    target = mlflow_store.other_version if current != mlflow_store.other_version else mlflow_store.onnx_version
    set_alias("apiservers", target)

    response = httpx.post(f"{server.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
    assert response.status_code == 200
    assert response.json()["version"] == target

    # within a few seconds every answer, from either process, carries the new version
    def all_new() -> dict[str, dict[str, Any]] | None:
        answers = _predict_many(server, 40, "swap")
        return answers if all(a["model_version"] == target for a in answers.values()) else None

    answers = _wait_for(all_new, 30, "every answer on the new version")
    owners = _wait_for(
        lambda: (o := _answered_by(server.log_dir, "predictions")) and set(answers) <= set(o) and o,
        20,
        "every prediction in a log file",
    )
    lines = {row["request_id"]: row for row in read_jsonl(server.log_dir, "date=*/predictions-*.jsonl")}
    by_process = {owners[rid] for rid in answers}
    assert len(by_process) == 2, "both API processes should have answered on the new version"
    assert {lines[rid]["model_version"] for rid in answers} == {target}

    # /health agrees whichever process answers it
    healths = _concurrently([lambda: httpx.get(f"{server.url}/health", timeout=10) for _ in range(12)])
    for health in healths:
        body = health.json()
        assert body["model"]["version"] == target
        assert body["model"]["inline"]["model_version"] == target
        assert body["mlflow"]["last_refresh_at"] is not None  # the reload ran in one process; all report it
        processes = body["model"]["api_processes"]  # every API process's own model, whichever process answers
        assert len(processes) == 2 and {p["model_version"] for p in processes} == {target}
        assert body["model"]["serving_versions"] == [target] and body["model"]["swap_in_progress"] is False
    assert body["status"] == "ok"


def test_sigterm_drains_both_api_processes_and_flushes_their_logs(two_api_servers: ServingProcess):
    """Under single-row load over many connections, killpg(SIGTERM): nothing reset, every answer logged. Runs last."""
    server = two_api_servers
    drained = sigterm_under_load(server, [SETOSA], per_connection=5)  # new connections: both processes get some
    assert drained.exit_code == 0, server.tail()
    assert set(drained.outcomes) <= {"200", "refused"}, drained.outcomes
    assert drained.outcomes["200"] > 50
    owners = _answered_by(server.log_dir, "predictions")
    missing = drained.answered - set(owners)
    assert not missing, f"{len(missing)} answered requests missing from the log"
    assert len({owners[rid] for rid in drained.answered}) == 2


def test_a_second_download_of_a_version_never_removes_the_complete_copy(mlflow_store: MlflowStore, tmp_path: Path):
    """Two API processes refreshing at once both download a new version: the first complete folder stays.

    Replacing it would pull the files from under a worker or another API process loading them.
    """
    from ml_platform_tests.conftest import reset_mlflow_globals
    from serving.registry import RegistryClient, parse_model_uri

    registry = RegistryClient(mlflow_store.tracking_uri, tmp_path / "models")
    try:
        bundle = registry.fetch(parse_model_uri(f"models:/{MODEL_NAME}/{mlflow_store.onnx_version}"))
        target = Path(bundle.local_dir)
        (target / "in-use").write_text("a reader holds this copy")
        before = target.stat().st_ino
        registry._download(MODEL_NAME, mlflow_store.onnx_version, target)  # the slower process finishes its copy
    finally:
        reset_mlflow_globals()
    assert target.stat().st_ino == before and (target / "in-use").exists()
    assert not list(target.parent.glob(".*.partial"))  # its own staging copy is cleaned up

"""Two serving replicas per track behind the real nginx: traffic spread, feedback counted on any replica.

Real MLflow (sqlite) store, real supervised serving processes, real nginx. iris runs two stable
replicas (v1) and two canary replicas (v2, 50%). Checked: the router spreads each track's share over
both of its replicas; feedback sent to *any* process (even one of the other track) counts once under
the version and track its receipt names, a replay on another replica is 409, and the metric source's
sum over the replicas equals the feedback log; a replica killed under traffic fails no client request.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_platform.deployment.backend import DeploymentError
from ml_platform.deployment.deployer import LocalDeployer
from ml_platform.deployment.local import LocalBackend, replicas_setting
from ml_platform_tests.conftest import free_port, reset_mlflow_globals
from ml_platform_tests.deployment.helpers import nginx_binary
from ml_platform_tests.deployment.test_two_models import first_row, register

pytestmark = pytest.mark.slow

TIMEOUT = 240.0


@dataclass
class Replicated:
    home: Path
    backend: LocalBackend
    row: dict[str, Any]

    def state(self) -> Any:
        state = self.backend.store.load()
        assert state is not None
        return state

    def predict(self, request_id: str) -> httpx.Response:
        return httpx.post(
            f"{self.backend.public_url}/predict",
            json={"records": [self.row]},
            headers={"X-Request-ID": request_id},
            timeout=30,
        )


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicated]:
    binary = nginx_binary()
    home = tmp_path_factory.mktemp("replicas") / "home"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "ML_PLATFORM_MODEL", "PREDICTION_LOG_DIR"):
            patch.delenv(name, raising=False)
        patch.setenv("ML_PLATFORM_HOME", str(home))
        patch.setenv("ML_PLATFORM_REPLICAS", "2")
        import mlflow

        from ml_platform.ml.mlflow_store import configure_mlflow

        configure_mlflow()
        assert (register("iris"), register("iris", {"n_estimators": 30})) == ("1", "2")
        mlflow.MlflowClient().set_registered_model_alias("iris-random-forest", "champion", "1")
        deployer = LocalDeployer(public_port=free_port(), nginx_binary=binary, stable_refresh_seconds=300)
        backend = deployer.backend_for("iris")
        assert backend.replicas == 2  # from ML_PLATFORM_REPLICAS
        try:
            with backend.lock(5.0, holder="replica test"):
                backend.ensure_stable("1", TIMEOUT)
                backend.start_canary("2", TIMEOUT)
                backend.set_canary_weight(50)
            yield Replicated(home, backend, first_row("iris"))
        finally:
            backend.shutdown()
            reset_mlflow_globals()


def feedback_log(home: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted((home / "logs" / "predictions" / "iris").glob("date=*/feedback-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def test_replicas_setting_is_validated() -> None:
    assert replicas_setting(None, {}) == 1
    assert replicas_setting(None, {"ML_PLATFORM_REPLICAS": "3"}) == 3
    for bad in ("0", "-1", "two", "17"):
        with pytest.raises(DeploymentError, match="ML_PLATFORM_REPLICAS"):
            replicas_setting(None, {"ML_PLATFORM_REPLICAS": bad})


def test_each_track_runs_two_replicas_and_the_router_spreads_its_share(replicated: Replicated) -> None:
    state = replicated.state()
    stable, canary = state.replicas("stable"), state.replicas("canary")
    assert [r.version for r in stable] == ["1", "1"] and [r.version for r in canary] == ["2", "2"]
    assert len({r.port for r in stable + canary}) == 4 and len({r.pid for r in stable + canary}) == 4
    conf = (replicated.home / "deployments" / "_router" / "nginx.conf").read_text()
    for record in stable + canary:
        assert f"server 127.0.0.1:{record.port} max_fails=1 fail_timeout=3s;" in conf
    targets = json.loads((replicated.home / "deployments" / "_prometheus" / "serving-iris.json").read_text())
    assert sorted(targets[0]["targets"]) == sorted(f"127.0.0.1:{r.port}" for r in stable + canary)

    log = replicated.backend.access_log
    offset = log.stat().st_size if log.exists() else 0
    answers = [replicated.predict(f"spread-{i}") for i in range(60)]

    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    time.sleep(0.5)
    with open(log, "rb") as handle:
        handle.seek(offset)
        used = Counter(json.loads(line)["addr"] for line in handle.read().decode().splitlines() if line.strip())
    for record in stable + canary:  # each replica answered some of its track's share
        assert used[f"127.0.0.1:{record.port}"] > 0, (record.track, record.port, used)
    status = replicated.backend.status()
    assert {"stable 1", "stable 2", "canary 1", "canary 2"} <= set(status.detail)


def test_feedback_counts_once_on_any_replica_and_the_metrics_sum_equals_the_log(replicated: Replicated) -> None:
    from ml_platform.deployment.metric_source import MetricSource

    state = replicated.state()
    processes = state.replicas("stable") + state.replicas("canary")
    source = MetricSource()
    before = {
        track: source.read(track, version, replicated.backend.metrics_targets(track), model="iris")
        for track, version in (("stable", "1"), ("canary", "2"))
    }
    logged_before = len(feedback_log(replicated.home))
    sent: Counter[tuple[str, str]] = Counter()
    receipts = []
    for i in range(24):
        answer = replicated.predict(f"fb-{i}-{os.getpid()}")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        receipts.append(body)
        # feedback goes straight to a process chosen round robin: often another replica, or the other track
        target = processes[i % len(processes)]
        label = body["predictions"][0] if i % 3 else "setosa"  # some right, some wrong
        response = httpx.post(
            f"{target.url}/feedback",
            json={"request_id": body["request_id"], "feedback_token": body["feedback_token"], "labels": [label]},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == body["model_version"]
        sent[(body["track"], body["model_version"])] += 1

    # a replay counts nothing, whichever replica it reaches (one ledger for every process of the model)
    for i, body in enumerate(receipts[:8]):
        target = processes[(i + 1) % len(processes)]
        replay = httpx.post(
            f"{target.url}/feedback",
            json={"request_id": body["request_id"], "feedback_token": body["feedback_token"], "labels": ["setosa"]},
            timeout=30,
        )
        assert replay.status_code == 409, replay.text
        assert replay.json()["error"] == "feedback already recorded"

    assert set(sent) == {("stable", "1"), ("canary", "2")}  # the split sent traffic to both tracks
    deadline = time.monotonic() + 30
    while len(feedback_log(replicated.home)) < logged_before + 24 and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = feedback_log(replicated.home)[logged_before:]
    assert len(lines) == 24
    for track, version in (("stable", "1"), ("canary", "2")):
        reading = source.read(track, version, replicated.backend.metrics_targets(track), model="iris")
        window = reading.minus(before[track])
        mine = [r for r in lines if (r["track"], r["model_version"]) == (track, version)]
        assert window.feedback == len(mine) == sent[(track, version)]
        assert window.feedback_correct == sum(1 for r in mine if r["correct"])
        assert window.live_accuracy == pytest.approx(sum(1 for r in mine if r["correct"]) / len(mine))


def test_a_replica_killed_under_traffic_fails_no_client_request(replicated: Replicated) -> None:
    from ml_platform.deployment.supervisor import SupervisorStatus
    from ml_platform.simulate import TrafficSimulator

    victim = replicated.state().replicas("stable")[1]
    status_path = replicated.home / "deployments" / "iris" / "run" / f"stable-{victim.port}" / "supervisor.json"
    before = SupervisorStatus.read(status_path)
    assert before is not None and before.child_pid is not None

    with TrafficSimulator(replicated.backend.public_url, rate=30, concurrency=3, timeout=30) as simulator:
        time.sleep(2.0)
        os.kill(before.child_pid, signal.SIGKILL)  # the serving process dies; its supervisor restarts it
        time.sleep(6.0)
    report = simulator.report

    assert report.predictions_ok > 100
    assert report.predictions_failed == 0 and report.feedback_failed == 0, report.failures
    after = SupervisorStatus.read(status_path)
    assert after is not None and after.restarts == before.restarts + 1

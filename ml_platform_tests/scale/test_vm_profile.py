"""Two models' whole loop on the at-scale profile of deploy/vm/, every part real.

PostgreSQL (Debian's), a Dagster instance on it (``deploy/vm/dagster.yaml``: Postgres storage,
QueuedRunCoordinator with one run per ``ml_platform/lane`` = ``<model>.<pipeline>``) driven by a real
``dagster-daemon run``, ``deploy/vm/mlflow-server.sh`` (tracking + registry in PostgreSQL, artifacts
served by the server), two serving replicas per track behind the local nginx (``ML_PLATFORM_REPLICAS=2``).

For iris and wine, through the public entry points only (landing folders, sensors ticking under the
daemon, ``dagster job launch``, ``dagster sensor``, ``python -m ml_platform.cli``):

1. data lands -> ``incoming_data_sensor`` -> queued training runs (wine lands two files: its two
   training runs never overlap, the lane limit) -> gated versions -> ``model_version_sensor`` ->
   first deployment (two stable replicas per model);
2. new data -> a new version -> a queued canary run (a fast policy as run config) under client traffic
   -> promoted; zero failed client requests; the live accuracy the analysis saw equals (within one
   request) what the feedback log says;
3. ``cli rollback`` under traffic: zero failed client requests;
4. drifted traffic -> a queued ``drift_job`` run -> drift report -> ``drift_retrain_sensor`` (under the
   daemon) -> a retraining run.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_platform_tests.conftest import REPO_ROOT, free_port
from ml_platform_tests.deployment.helpers import nginx_binary
from ml_platform_tests.scale.conftest import Postgres, stop_group

pytestmark = [pytest.mark.slow, pytest.mark.scale]

MODELS = ("iris", "wine")
WAIT = 600.0  # generous: two cores, shared
FAST_POLICY = {
    "steps": [50],
    "step_pause_seconds": 10,
    "analysis_interval_seconds": 5,
    "window_seconds": 10,
    "min_feedback_samples": 10,
    "min_requests": 5,
    "max_p95_latency_ms": 10000,
    "failure_limit": 3,
    "inconclusive_limit": 12,
}
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass
class Profile:
    home: Path
    env: dict[str, str]
    mlflow_url: str
    port: int
    daemon_started: float

    def dagster(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "dagster", *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"dagster {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done

    def sensors(self, action: str, *names: str) -> None:
        """``dagster sensor <action> <name>`` for each name, side by side (each loads the code location)."""
        started = [
            subprocess.Popen(
                [sys.executable, "-m", "dagster", "sensor", action, "-m", "ml_platform", name],
                env=self.env,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in names
        ]
        for name, process in zip(names, started, strict=True):
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, f"dagster sensor {action} {name}:\n{out[-2000:]}\n{err[-3000:]}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "ml_platform.cli", *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"cli {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done

    def url(self, model: str) -> str:
        return f"http://127.0.0.1:{self.port}/models/{model}"


@pytest.fixture(scope="module")
def profile(postgres: Postgres, mlflow_on_postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Profile]:
    nginx_binary()  # skips without nginx
    home = tmp_path_factory.mktemp("vm") / "home"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "deploy" / "vm" / "dagster.yaml", dagster_home / "dagster.yaml")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ML_PLATFORM_", "DAGSTER_"))},
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DAGSTER_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "False",
        "PYTHONPATH": str(REPO_ROOT),
        "ML_PLATFORM_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_PG_URL": postgres.create_database("dagster"),
        "MLFLOW_TRACKING_URI": mlflow_on_postgres,
        "ML_PLATFORM_REPLICAS": "2",
        "DEPLOY_PUBLIC_PORT": str(port),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY", "ML_PLATFORM_"))]:
            patch.delenv(key)
        for key in ("ML_PLATFORM_HOME", "DAGSTER_HOME", "DAGSTER_PG_URL", "MLFLOW_TRACKING_URI", "DEPLOY_PUBLIC_PORT"):
            patch.setenv(key, env[key])
        profile = Profile(home, env, mlflow_on_postgres, port, 0.0)
        land_first_data(profile)  # before the daemon starts: its first sensor ticks find the files
        # Sensors are on by default. The drift-retrain sensors tick every 5 minutes: stopped until drift
        # reports exist, they tick at once when started (a sensor that never ticked is due). churn, the
        # catalog's third model, is left out (its sensor would land its bundled data in the fresh home).
        profile.sensors("stop", "iris_drift_retrain_sensor", "wine_drift_retrain_sensor", "churn_incoming_data_sensor")
        log = (home / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "ml_platform"],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        profile.daemon_started = time.time()
        try:
            yield profile
        finally:
            stop_group(daemon)
            log.close()
            for model in MODELS:
                subprocess.run(
                    [sys.executable, "-m", "ml_platform.cli", "stop", "--model", model, "--force"],
                    env=env,
                    cwd=REPO_ROOT,
                    capture_output=True,
                    timeout=300,
                )
            from ml_platform_tests.conftest import reset_mlflow_globals

            reset_mlflow_globals()


# -- data --------------------------------------------------------------------------------------


def frame(model: str) -> Any:
    import pandas as pd

    from ml_platform.catalog import get_model

    return pd.read_csv(get_model(model).spec.bootstrap_path())


def land(profile: Profile, model: str, name: str, data: Any) -> None:
    folder = profile.home / "data" / model / "incoming"
    folder.mkdir(parents=True, exist_ok=True)
    data.to_csv(folder / f".{name}.tmp", index=False)
    os.replace(folder / f".{name}.tmp", folder / name)  # a sensor never sees half a file


def land_first_data(profile: Profile) -> None:
    land(profile, "iris", "iris-1.csv", frame("iris"))
    land(profile, "wine", "wine-1.csv", frame("wine"))
    bad = frame("wine").head(40).copy()
    bad[bad.columns[0]] = -1e6  # far outside the spec's range: the batch gate quarantines it
    land(profile, "wine", "wine-bad.csv", bad)


# -- Dagster -----------------------------------------------------------------------------------


@functools.cache
def instance() -> Any:
    """The profile's instance (Postgres), as every process of the profile finds it: ``$DAGSTER_HOME``."""
    import dagster as dg

    return dg.DagsterInstance.get()


def runs(tags: dict[str, str]) -> list[Any]:
    import dagster as dg

    return list(instance().get_runs(filters=dg.RunsFilter(tags=tags)))


def wait_runs(tags: dict[str, str], count: int, timeout: float = WAIT, daemon_log: Path | None = None) -> list[Any]:
    """At least ``count`` runs with ``tags``, all finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = runs(tags)
        if len(found) >= count and all(r.status.value in TERMINAL for r in found):
            return found
        time.sleep(2.0)
    log = daemon_log.read_text()[-4000:] if daemon_log else ""
    pytest.fail(f"runs {tags}: {[(r.run_id, r.status.value) for r in runs(tags)]} after {timeout}s\n{log}")


def materialization(run_id: str, asset: str) -> dict[str, Any]:
    records = instance().get_records_for_run(run_id, of_type=_materialized()).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event.asset_key.path[-1] == asset:
            return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"run {run_id} materialized no {asset}")


def _materialized() -> Any:
    import dagster as dg

    return dg.DagsterEventType.ASSET_MATERIALIZATION


def client(profile: Profile) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=profile.mlflow_url, registry_uri=profile.mlflow_url)


def registered(model: str) -> str:
    from ml_platform.catalog import get_model

    return get_model(model).spec.model.name


def champion(profile: Profile, model: str) -> str:
    return str(client(profile).get_model_version_by_alias(registered(model), "champion").version)


def challenger(profile: Profile, model: str) -> str:
    return str(client(profile).get_model_version_by_alias(registered(model), "challenger").version)


# -- traffic -----------------------------------------------------------------------------------


def feedback_lines(profile: Profile, model: str) -> list[dict[str, Any]]:
    lines = []
    for path in (profile.home / "logs" / "predictions" / model).glob("date=*/feedback-*.jsonl"):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(lines, key=lambda r: r["timestamp"])


def simulators(profile: Profile, rate: float = 12.0) -> list[Any]:
    from ml_platform.catalog import get_model
    from ml_platform.simulate import TrafficSimulator

    return [
        TrafficSimulator(profile.url(m), rate=rate, concurrency=2, spec=get_model(m).spec, timeout=60).start()
        for m in MODELS
    ]


def stop_all(sims: list[Any]) -> None:
    for sim in sims:
        sim.stop()


def assert_no_failed_request(sims: list[Any]) -> None:
    for model, sim in zip(MODELS, sims, strict=True):
        report = sim.report
        assert report.predictions_ok > 20, (model, report.as_dict())
        assert report.predictions_failed == 0 and report.feedback_failed == 0, (model, report.failures[:10])


def drifted_traffic(profile: Profile, model: str, requests: int = 30, rows: int = 50) -> None:
    """Rows moved three standard deviations on every numeric feature, through the router."""
    from ml_platform.catalog import get_model

    spec = get_model(model).spec
    data = frame(model)
    numeric = list(spec.numeric_features)
    moved = data.copy()
    moved[numeric] = moved[numeric] + 3 * moved[numeric].std()
    records = moved[list(spec.feature_names)].to_dict("records")
    with httpx.Client(timeout=60) as http:
        for i in range(requests):
            batch = [records[(i * rows + j) % len(records)] for j in range(rows)]
            answer = http.post(f"{profile.url(model)}/predict", json={"records": batch})
            assert answer.status_code == 200, answer.text


def analysis_live_accuracy(metadata: dict[str, Any]) -> tuple[float, int]:
    """(accuracy, samples) of the last analysis the canary run recorded (its step tables)."""
    found: tuple[float, int] | None = None
    for key in sorted(k for k in metadata if k.startswith("step_")):
        for line in str(metadata[key]).splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) > 5:
                match = re.match(r"^(\d+\.\d+) \((\d+)", cells[5])
                if match:
                    found = (float(match.group(1)), int(match.group(2)))
    assert found is not None, metadata
    return found


# -- the loop ----------------------------------------------------------------------------------


def test_two_models_full_loop_on_postgres_dagster_mlflow_server_and_two_replicas(profile: Profile) -> None:
    daemon_log = profile.home / "daemon.log"
    started = time.monotonic()

    # 1. landed data -> sensors under the daemon -> queued training runs -> first deployments
    wine_training = wait_runs({"ml_platform/lane": "wine.training"}, 2, daemon_log=daemon_log)
    iris_training = wait_runs({"ml_platform/lane": "iris.training"}, 1, daemon_log=daemon_log)
    for run in wine_training + iris_training:
        assert run.tags.get("dagster/sensor_name", "").endswith("_incoming_data_sensor"), run.tags
    assert sorted(r.status.value for r in wine_training) == ["FAILURE", "SUCCESS"]  # the bad file failed its gate
    assert iris_training[0].status.value == "SUCCESS"
    stats = sorted((instance().get_run_stats(r.run_id) for r in wine_training), key=lambda s: s.start_time)
    assert stats[0].end_time <= stats[1].start_time, "two training runs of one model overlapped"
    for model in MODELS:
        deployed = wait_runs({"ml_platform/lane": f"{model}.deployment"}, 1, daemon_log=daemon_log)
        assert [r.status.value for r in deployed] == ["SUCCESS"]
        assert deployed[0].tags["dagster/sensor_name"] == f"{model}_model_version_sensor"
        assert champion(profile, model) == "1"
    state = json.loads((profile.home / "deployments" / "iris" / "state.json").read_text())
    assert state["stable"] and len(state["stable_peers"]) == 1  # two stable replicas
    assert instance().run_storage.__class__.__name__ == "PostgresRunStorage"

    # 2. new data -> new versions -> canary runs queued with a fast policy, under traffic -> promoted
    # from now on canaries are launched by hand, with the fast policy
    profile.sensors("stop", *(f"{model}_model_version_sensor" for model in MODELS))
    for model in MODELS:
        land(profile, model, f"{model}-2.csv", frame(model).sample(frac=0.9, random_state=7))
    for model in MODELS:
        done = wait_runs({"ml_platform/lane": f"{model}.training"}, 3 if model == "wine" else 2, daemon_log=daemon_log)
        assert max(done, key=lambda r: instance().get_run_stats(r.run_id).start_time).status.value == "SUCCESS"
        assert challenger(profile, model) == "2"
    sims = simulators(profile)
    try:
        for model in MODELS:
            instance().add_dynamic_partitions(f"{model}_model_versions", ["2"])
            run_config = {"ops": {f"{model}__canary_deployment": {"config": FAST_POLICY}}}
            profile.dagster(
                "job", "launch", "-m", "ml_platform", "-j", f"{model}_canary_deployment_job",
                "--config-json", json.dumps(run_config), "--tags", json.dumps({"dagster/partition": "2"}),
            )  # fmt: skip
        canaries = {m: wait_runs({"ml_platform/lane": f"{m}.deployment"}, 2, daemon_log=daemon_log)[0] for m in MODELS}
    finally:
        stop_all(sims)
    assert_no_failed_request(sims)
    for model, run in canaries.items():
        assert run.status.value == "SUCCESS", model
        metadata = materialization(run.run_id, "canary_deployment")
        assert metadata["decision"] == "promoted", metadata
        assert champion(profile, model) == "2"
        accuracy, samples = analysis_live_accuracy(metadata)
        logged = [r for r in feedback_lines(profile, model) if (r["track"], r["model_version"]) == ("canary", "2")]
        assert len(logged) >= samples >= FAST_POLICY["min_feedback_samples"]
        counted = logged[:samples]  # the log in time order: what the analysis had seen
        correct = sum(1 for r in counted if r["correct"])
        assert abs(accuracy * samples - correct) <= 1.0, (model, accuracy, samples, correct)

    # 3. a rollback under traffic fails no client request
    sims = simulators(profile)
    try:
        time.sleep(3)
        for model in MODELS:
            profile.cli("rollback", "--model", model)
        time.sleep(3)
    finally:
        stop_all(sims)
    assert_no_failed_request(sims)
    for model in MODELS:
        assert champion(profile, model) == "1"
        assert httpx.get(f"{profile.url(model)}/health", timeout=30).json()["model"]["version"] == "1"

    # 4. drifted traffic -> drift_job (queued) -> drift report -> drift_retrain_sensor under the daemon -> retrain
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    for model in MODELS:
        drifted_traffic(profile, model)
    time.sleep(2)  # the prediction log writers flush
    for model in MODELS:
        profile.dagster(
            "job", "launch", "-m", "ml_platform", "-j", f"{model}_drift_job",
            "--tags", json.dumps({"dagster/partition": today}),
        )  # fmt: skip
    for model in MODELS:
        drift_runs = wait_runs({"ml_platform/lane": f"{model}.drift"}, 1, daemon_log=daemon_log)
        report = materialization(drift_runs[0].run_id, "drift_report")
        assert report["drift_detected"] is True, (model, report)
    profile.sensors("start", *(f"{model}_drift_retrain_sensor" for model in MODELS))  # due at once
    for model in MODELS:
        retrains = wait_runs(
            {"ml_platform/lane": f"{model}.training", "dagster/sensor_name": f"{model}_drift_retrain_sensor"},
            1,
            timeout=WAIT,
            daemon_log=daemon_log,
        )
        assert retrains[0].status.value == "SUCCESS", model
    print(f"at-scale loop of {MODELS}: {time.monotonic() - started:.0f}s")

"""Crash-safe rollouts: the Dagster run driving a canary is SIGKILLed at each phase, the next sensor tick finishes it.

Real parts: an MLflow sqlite registry, a Dagster instance on disk shared with real
``dagster job execute`` subprocesses, real serving processes (stable and canary under their
supervisors) behind the real nginx, and a traffic generator sending predictions and feedback
through the public port the whole time. Nothing is simulated: the kill is ``SIGKILL`` to the
process group of ``dagster job execute`` (the run process and its step process, the one
driving the rollout), the way an OOM kill or a node loss ends a run.

For each phase (before traffic, mid-step, during promotion) the test checks the documented
half-way state (the persisted record says where the rollout stood; the canary keeps serving at its
weight; no request fails), then that the next ``model_version_sensor`` tick marks the dead run
failed and requests a resume run, and that this run leaves the system consistent: the candidate
promoted, stable serving it, no canary, no record, and still zero failed requests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
import yaml

from ml_platform.catalog import get_model
from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.pipeline import build_model_defs
from ml_platform.defs.resources import MetricSourceResource, MlflowRegistryResource, platform_resources
from ml_platform.deployment.deployer import LocalDeployer
from ml_platform.deployment.rollout_state import FileRolloutStateStore, RolloutRecord
from ml_platform.deployment.state import StateStore
from ml_platform.simulate import TrafficSimulator
from ml_platform_tests.conftest import REPO_ROOT, free_port, reset_mlflow_globals
from ml_platform_tests.deployment.helpers import nginx_binary, record_report
from ml_platform_tests.pipeline.helpers import defs_for_entry
from ml_platform_tests.registry_helpers import hash_tags, pass_gates, register_fitted

pytestmark = pytest.mark.slow

MODEL = "iris-random-forest"
PLATFORM_MODEL = "iris"
TIMEOUT = 240.0
POLICY = {
    "steps": [10, 50],
    "step_pause_seconds": 3.0,
    "analysis_interval_seconds": 1.0,
    "window_seconds": 4.0,
    "min_requests": 5,
    "min_feedback_samples": 8,
    "failure_limit": 2,
    "inconclusive_limit": 8,
    "max_p95_latency_ms": 1500.0,  # generous: a busy 2-core machine's hiccup is not a slow canary
    "startup_timeout_seconds": TIMEOUT,
}


@dataclass
class Platform:
    home: Path
    dagster_home: Path
    port: int
    client: Any
    instance: dg.DagsterInstance
    env: dict[str, str]

    @property
    def store(self) -> FileRolloutStateStore:
        return FileRolloutStateStore(self.home / "deployments")

    def state(self) -> Any:
        return StateStore(self.home / "deployments" / PLATFORM_MODEL).load()

    def deployer(self) -> LocalDeployer:
        return LocalDeployer(public_port=self.port, stable_refresh_seconds=300)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """iris v1 registered, gated, champion and served on stable behind nginx; a Dagster instance on disk."""
    nginx_binary()
    home = tmp_path_factory.mktemp("rollout-crash") / "home"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "ML_PLATFORM_MODEL", "PREDICTION_LOG_DIR"):
            patch.delenv(name, raising=False)
        patch.setenv("ML_PLATFORM_HOME", str(home))
        patch.setenv("DAGSTER_HOME", str(dagster_home))
        import mlflow
        import pandas as pd

        from ml_platform.ml.mlflow_store import configure_mlflow, ensure_experiment, experiment_name
        from ml_platform.ml.training import fit_model, split_dataset

        configure_mlflow()
        spec = get_model(PLATFORM_MODEL).spec
        split = split_dataset(pd.read_csv(spec.bootstrap_path()), spec)
        mlflow.set_experiment(experiment_id=ensure_experiment(experiment_name(spec.name)))
        registered, _ = register_fitted(fit_model(split, spec), spec, split, data_version="crash-test")
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(MODEL, "champion", str(registered.version))
        port = free_port()
        backend = LocalDeployer(public_port=port, stable_refresh_seconds=300).backend_for(PLATFORM_MODEL)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "DEPLOY_PUBLIC_PORT": str(port),
            "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        }
        try:
            with backend.lock(5.0, holder="crash test setup"):
                backend.ensure_stable(str(registered.version), TIMEOUT)
            with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
                yield Platform(home, dagster_home, port, client, instance, env)
        finally:
            backend.shutdown()
            reset_mlflow_globals()
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def new_candidate(platform: Platform) -> str:
    """A validated copy of the champion (a good candidate), as a notebook user would register it."""
    client = platform.client
    source = client.get_model_version_by_alias(MODEL, "champion")
    version = str(client.create_model_version(MODEL, source.source, source.run_id).version)
    for key, value in hash_tags(source).items():
        client.set_model_version_tag(MODEL, version, key, value)
    pass_gates(client, MODEL, version)
    return version


def start_run(platform: Platform, version: str, config: Path) -> subprocess.Popen[bytes]:
    """``dagster job execute`` of the canary job for one version partition (the documented command)."""
    platform.instance.add_dynamic_partitions(f"{PLATFORM_MODEL}_model_versions", [version])
    tags = {"dagster/partition": version, **ModelContext(get_model(PLATFORM_MODEL)).tags}
    tags["ml_platform/pipeline"] = "deployment"
    log = open(platform.home / f"run-{version}.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "job",
            "execute",
            "-m",
            "ml_platform",
            "-j",
            f"{PLATFORM_MODEL}_canary_deployment_job",
            "-c",
            str(config),
            "--tags",
            json.dumps(tags),
        ],
        env={**platform.env, "DAGSTER_HOME": str(platform.dagster_home)},
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the run process and its step process
    )


def wait_for_phase(platform: Platform, run: subprocess.Popen[bytes], phase: str, step: int = 0) -> RolloutRecord:
    deadline = time.monotonic() + TIMEOUT + 120
    while time.monotonic() < deadline:
        try:
            record = platform.store.load(PLATFORM_MODEL)
        except Exception:  # a torn read cannot happen (atomic rename), but do not fail the poll on it
            record = None
        reached = record is not None and record.phase == phase and record.step >= step
        # mid-step means the weight is set and the step's first analysis is done
        if reached and record is not None and (phase != "progressing" or record.analyses):
            return record
        assert run.poll() is None, f"the run ended before {phase}: see {platform.home}/run-*.log"
        time.sleep(0.02)
    raise AssertionError(f"the rollout never reached {phase}")


def sensor_tick(platform: Platform) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=platform.instance,
        cursor=None,
        resources={"mlflow_registry": MlflowRegistryResource(), "deployer": platform.deployer()},
    )
    sensor = defs_for_entry(get_model(PLATFORM_MODEL)).resolve_sensor_def(f"{PLATFORM_MODEL}_model_version_sensor")
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def run_request(platform: Platform, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions.merge(
        build_model_defs(ModelContext(get_model(PLATFORM_MODEL))),
        dg.Definitions(
            resources={
                **platform_resources(),
                "deployer": platform.deployer(),
                "metric_source": MetricSourceResource(),
                "mlflow_registry": MlflowRegistryResource(),
            }
        ),
    )
    job = defs.resolve_job_def(f"{PLATFORM_MODEL}_canary_deployment_job")
    return job.execute_in_process(
        partition_key=request.partition_key,
        instance=platform.instance,
        run_config={"ops": {f"{PLATFORM_MODEL}__canary_deployment": {"config": POLICY}}},
        tags=request.tags,
        raise_on_error=True,
    )


@pytest.mark.parametrize(
    ("phase", "step"),
    [("pending", 0), ("progressing", 1), ("promoting", 0)],
    ids=["before-traffic", "mid-step", "during-promotion"],
)
def test_a_rollout_whose_run_is_killed_is_finished_by_the_next_sensor_tick(
    platform: Platform, tmp_path: Path, phase: str, step: int
) -> None:
    champion = str(platform.client.get_model_version_by_alias(MODEL, "champion").version)
    stable_pid = platform.state().stable.pid
    version = new_candidate(platform)
    config = tmp_path / "run_config.yaml"
    config.write_text(yaml.safe_dump({"ops": {f"{PLATFORM_MODEL}__canary_deployment": {"config": POLICY}}}))
    traffic = TrafficSimulator(f"http://127.0.0.1:{platform.port}", rate=20.0, concurrency=4)
    traffic.start()
    try:
        run = start_run(platform, version, config)
        try:
            left = wait_for_phase(platform, run, phase, step)
            os.killpg(run.pid, signal.SIGKILL)
            killed_at = time.monotonic()
        finally:
            run.wait(30)
        dead_run = left.run_id
        # The documented half-way state: the record stays where the dead run left it.
        record = platform.store.load(PLATFORM_MODEL)
        assert record is not None and record.phase == phase and record.run_id == dead_run
        assert record.owner_alive() is False
        if phase == "progressing":
            assert platform.state().canary_weight == 10  # the canary keeps its traffic until a run takes over
        time.sleep(1.0)  # traffic goes on against the half-way state
        assert platform.instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.STARTED  # Dagster cannot tell

        tick_at = time.monotonic()
        tick = sensor_tick(platform)
        (request,) = tick.run_requests
        assert request.partition_key == version and ":resume:" in (request.run_key or "")
        assert request.tags["ml_platform/resume_of"] == dead_run
        assert platform.instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.FAILURE
        result = run_request(platform, request)
        consistent_at = time.monotonic()
        time.sleep(1.0)
    finally:
        report = traffic.stop()
    record_report(
        f"rollout_killed_{phase}",
        traffic=report.as_dict(),
        tick_to_consistent_seconds=round(consistent_at - tick_at, 2),
        kill_to_tick_seconds=round(tick_at - killed_at, 2),
    )

    (materialization,) = result.asset_materializations_for_node(f"{PLATFORM_MODEL}__canary_deployment")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["decision"] == "promoted", metadata["reason"]
    assert metadata["resumed_from"] == phase and metadata["attempts"] == 2
    if phase in ("progressing", "promoting"):  # analyses of the dead run are kept in the history
        assert metadata["analysis_history"].count("| 1 | 10% |") >= 2, metadata["analysis_history"]
    assert str(platform.client.get_model_version_by_alias(MODEL, "champion").version) == version
    assert str(platform.client.get_model_version_by_alias(MODEL, "previous_champion").version) == champion
    tags = platform.client.get_model_version(MODEL, version).tags
    assert tags["deployment_status"] == "promoted" and phase in tags["deployment.resumed_from"]
    state = platform.state()
    assert state.canary is None and state.canary_weight == 0
    assert state.stable.pid == stable_pid  # stable hot-swapped, never restarted
    health = httpx.get(f"http://127.0.0.1:{state.stable.port}/health", timeout=5).json()
    assert health["model"]["serving_versions"] == [version]
    assert platform.store.load(PLATFORM_MODEL) is None
    assert not sensor_tick(platform).run_requests  # nothing left to resume, nothing waiting
    assert report.predictions_ok > 50, report.summary()
    assert report.predictions_failed == 0, report.summary()


def test_the_documented_commands_deploy_one_version_by_hand(platform: Platform, tmp_path: Path) -> None:
    """docs/canary.md "Run one by hand": add the version partition without the UI, then materialize it."""
    version = new_candidate(platform)
    config = tmp_path / "run_config.yaml"
    one_step = {**POLICY, "steps": [50]}  # the command is under test here, not the steps
    config.write_text(yaml.safe_dump({"ops": {f"{PLATFORM_MODEL}__canary_deployment": {"config": one_step}}}))
    env = {**platform.env, "DAGSTER_HOME": str(platform.dagster_home)}
    add = (
        "import dagster as dg; "
        f"dg.DagsterInstance.get().add_dynamic_partitions('{PLATFORM_MODEL}_model_versions', ['{version}'])"
    )
    subprocess.run([sys.executable, "-c", add], env=env, cwd=REPO_ROOT, check=True, timeout=120)
    command = [
        *(sys.executable, "-m", "dagster", "asset", "materialize", "-m", "ml_platform"),
        *("--select", f"{PLATFORM_MODEL}/canary_deployment", "--partition", version, "-c", str(config)),
    ]
    traffic = TrafficSimulator(f"http://127.0.0.1:{platform.port}", rate=20.0, concurrency=4)
    traffic.start()
    try:
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    finally:
        report = traffic.stop()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert str(platform.client.get_model_version_by_alias(MODEL, "champion").version) == version
    assert platform.client.get_model_version(MODEL, version).tags["deployment_status"] == "promoted"
    assert report.predictions_failed == 0, report.summary()

"""Canary rollouts end to end: real training, sensor, Dagster runs, serving processes, nginx and Prometheus.

From a fresh platform home, `training_job` trains v1; `model_version_sensor`
requests its deployment and `canary_deployment_job` puts it straight on
stable (no champion yet). Then, each under continuous simulated traffic
through the public port (`ml_platform.simulate`, true labels posted as feedback):

- a good candidate (another forest, registered outside Dagster) is promoted,
  judged through a real Prometheus (PromQL) scraping the serving processes;
- `python -m ml_platform.cli rollback` returns to the previous champion;
- four faults, each ending in rollback with stable untouched:
  bad model (trained on shuffled labels), canary killed mid-rollout,
  canary answering 5xx, slow canary.

What is simulated: the bad model and the good candidate are registered and
tagged `validation_status=passed` by the test (as a notebook would); the 5xx
and slow faults come from a fault-injecting proxy (a test double) placed
between the router and a real canary process, switched on once the canary
takes traffic; the crash is a SIGKILL to the canary's process group. Stable
serving, nginx, MLflow, Dagster and Prometheus are the real thing.

Every test asserts zero failed predictions through the public port; counts
and timings go to $CANARY_TEST_REPORT when set.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
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
from ml_platform.deployment.metric_source import MetricSource
from ml_platform.deployment.processes import group_members, pid_alive
from ml_platform.deployment.state import StateStore
from ml_platform.deployment.supervisor import SupervisorStatus
from ml_platform.simulate import SimulationReport, TrafficSimulator
from ml_platform_tests.conftest import REPO_ROOT, free_port
from ml_platform_tests.deployment.helpers import FaultProxy, nginx_binary, record_report
from ml_platform_tests.pipeline.helpers import defs_for_entry, registry_client, run_training
from ml_platform_tests.registry_helpers import hash_tags, pass_gates

pytestmark = pytest.mark.slow

MODEL = "iris-random-forest"  # the registered MLflow model of the platform model iris (the default model)
PLATFORM_MODEL = "iris"
RATE = 25.0
TEST_POLICY = {
    "steps": [10, 25, 50],
    "step_pause_seconds": 3.0,
    "analysis_interval_seconds": 1.0,
    "window_seconds": 4.0,
    "min_requests": 5,
    "min_feedback_samples": 8,
    "failure_limit": 2,
    "inconclusive_limit": 5,
    # The spec default is 500 ms; the test allows more so a busy CI machine's hiccup is not a "slow canary".
    "max_p95_latency_ms": 1000.0,
    "startup_timeout_seconds": 240.0,
}
_PROXY: FaultProxy | None = None


class ProxiedDeployer(LocalDeployer):
    """The local deployer with the fault proxy between the router and the canary process."""

    def backend_for(self, model_name: str) -> Any:
        backend = super().backend_for(model_name)
        assert _PROXY is not None
        backend.canary_upstream_port = lambda record: _PROXY.attach(record.port)  # type: ignore[attr-defined]
        return backend


@dataclass
class Deployment:
    """One canary_deployment_job run and what the test observed around it."""

    version: str
    result: dg.ExecuteInProcessResult
    metadata: dict[str, Any]
    check_passed: bool
    traffic: SimulationReport
    tags: dict[str, str] = field(default_factory=dict)

    def value(self, key: str) -> Any:
        return self.metadata[key].value


@dataclass
class Platform:
    home: Path
    instance: dg.DagsterInstance
    public_port: int
    prometheus_url: str | None
    cursor: str | None = None
    first: Deployment | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def deployer(self, proxied: bool = False) -> LocalDeployer:
        cls = ProxiedDeployer if proxied else LocalDeployer
        return cls(public_port=self.public_port, stable_refresh_seconds=300)

    def state(self) -> Any:
        return StateStore(self.home / "deployments" / PLATFORM_MODEL).load()

    def deploy(
        self,
        *,
        deployer: LocalDeployer | None = None,
        metric_source: MetricSource | None = None,
        inject: Callable[[Any], None] | None = None,
        load: bool = True,
    ) -> Deployment:
        """Sensor tick -> run request -> canary_deployment_job for that partition, under simulated traffic."""
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={"mlflow_registry": MlflowRegistryResource(), "deployer": deployer or self.deployer()},
        )
        model_defs = defs_for_entry(get_model(PLATFORM_MODEL))
        tick = model_defs.resolve_sensor_def(f"{PLATFORM_MODEL}_model_version_sensor")(context)
        assert isinstance(tick, dg.SensorResult)
        assert len(tick.run_requests) == 1, tick.skip_reason
        request = tick.run_requests[0]
        self.cursor = tick.cursor
        self.instance.add_dynamic_partitions(f"{PLATFORM_MODEL}_model_versions", [request.partition_key])
        source = metric_source or MetricSource()
        defs = dg.Definitions.merge(
            build_model_defs(ModelContext(get_model(PLATFORM_MODEL))),
            dg.Definitions(
                resources={
                    **platform_resources(),
                    "deployer": deployer or self.deployer(),
                    "metric_source": MetricSourceResource(**source.model_dump()),
                    "mlflow_registry": MlflowRegistryResource(),
                }
            ),
        )
        job = defs.resolve_job_def(f"{PLATFORM_MODEL}_canary_deployment_job")
        injector = FaultInjector(self, inject) if inject else None
        simulator = TrafficSimulator(self.url, rate=RATE, concurrency=6) if load else None
        if simulator:
            simulator.start()
        try:
            if injector:
                injector.start()
            result = job.execute_in_process(
                partition_key=request.partition_key,
                instance=self.instance,
                run_config={"ops": {f"{PLATFORM_MODEL}__canary_deployment": {"config": TEST_POLICY}}},
                tags=request.tags,
                raise_on_error=False,
            )
            time.sleep(1.0)  # traffic keeps flowing after the decision too
        finally:
            traffic = simulator.stop() if simulator else SimulationReport()
            if injector:
                injector.stop()
        if injector:
            assert injector.fired, "the fault was never injected"
        node = f"{PLATFORM_MODEL}__canary_deployment"
        # from the run's event log, as the UI reads it (a rejection logs the check before the step fails)
        (logged,) = self.instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        check = logged.get_dagster_event().event_specific_data
        if result.success:
            (materialization,) = result.asset_materializations_for_node(node)
            metadata = dict(materialization.metadata)
        else:  # a rejection fails the partition (red in the Partitions view); the failure carries the metadata
            failure = result.failure_data_for_node(node)
            assert failure is not None and failure.user_failure_data is not None, failure
            metadata = dict(failure.user_failure_data.metadata)
            assert metadata["decision"].value == "rejected", failure
        tags = registry_client().get_model_version(MODEL, request.partition_key).tags
        return Deployment(request.partition_key, result, metadata, check.passed, traffic, tags)


class FaultInjector(threading.Thread):
    """Waits until the canary takes traffic (weight > 0 in the deployer's state), then injects the fault once."""

    def __init__(self, platform: Platform, action: Callable[[Any], None]) -> None:
        super().__init__(daemon=True)
        self.platform, self.action = platform, action
        self.fired = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            state = self.platform.state()
            if state is not None and state.canary is not None and state.canary_weight > 0:
                self.action(state)
                self.fired = True
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def start_prometheus(home: Path, folder: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    targets = home / "deployments" / "_prometheus"
    targets.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "ml-serving",
                        "file_sd_configs": [{"files": [str(targets / "serving-*.json")], "refresh_interval": "1s"}],
                    }
                ],
            }
        )
    )
    port = free_port()
    with open(folder / "prometheus.log", "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("Prometheus did not become ready")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A fresh platform home with v1 trained by training_job, and the tools the rollouts use."""
    global _PROXY
    nginx_binary()
    home = tmp_path_factory.mktemp("canary") / "platform home"  # a space: every path must be quoted
    prometheus = None
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "ML_PLATFORM_MODEL"):
            mp.delenv(name, raising=False)
        mp.setenv("ML_PLATFORM_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        (home / "dagster").mkdir(parents=True)
        _PROXY = FaultProxy()
        try:
            with dg.instance_for_test() as instance:
                started = time.monotonic()
                training = run_training(instance)
                assert training.success
                record_report("training_job", seconds=round(time.monotonic() - started, 1))
                prometheus = start_prometheus(home, tmp_path_factory.mktemp("prometheus"))
                yield Platform(home, instance, free_port(), prometheus[1] if prometheus else None)
        finally:
            LocalDeployer().backend_for(PLATFORM_MODEL).shutdown()
            if prometheus is not None:
                prometheus[0].terminate()
                prometheus[0].wait(20)
            _PROXY.stop()
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="module")
def deployed(platform: Platform) -> Platform:
    """v1 deployed by the sensor and the job: no champion existed, so it went straight to stable."""
    if platform.first is None:
        platform.first = platform.deploy(load=False)
    return platform


# -- helpers --------------------------------------------------------------------------------------


def aliases() -> dict[str, str | None]:
    client = registry_client()
    out = {}
    for alias in ("champion", "previous_champion"):
        try:
            out[alias] = str(client.get_model_version_by_alias(MODEL, alias).version)
        except Exception:
            out[alias] = None
    return out


def stable_health(platform: Platform) -> dict[str, Any]:
    state = platform.state()
    return httpx.get(f"http://127.0.0.1:{state.stable.port}/health", timeout=5).json()


BAD_BATCH_KEY = "labels-rotated.csv@abababababababababababababababababababababababababababababababab"


def register(*, params: dict[str, Any] | None = None, shuffle_labels: bool = False, copy_of: str | None = None) -> str:
    """Register a version outside Dagster and tag it validated, as a notebook user would."""
    client = registry_client()
    if copy_of is not None:
        source = client.get_model_version(MODEL, copy_of)
        version = client.create_model_version(MODEL, source.source, source.run_id).version
        tags = {"reference_snapshot_uri": source.tags.get("reference_snapshot_uri", ""), **hash_tags(source)}
    else:
        import mlflow
        import pandas as pd

        from ml_platform.ml.mlflow_store import ensure_experiment, experiment_name
        from ml_platform.ml.registry import log_and_register_model
        from ml_platform.ml.training import evaluate_model, fit_model, split_dataset

        spec = get_model(PLATFORM_MODEL).spec
        frame = pd.read_csv(spec.bootstrap_path())
        if shuffle_labels:
            frame[spec.target.name] = frame[spec.target.name].sample(frac=1.0, random_state=1).to_numpy()
        split = split_dataset(frame, spec)
        if params:
            spec = replace(spec, model=replace(spec.model, params={**spec.model.params, **params}))
        model = fit_model(split, spec)
        mlflow.set_experiment(experiment_id=ensure_experiment(experiment_name(spec.name)))
        with mlflow.start_run() as run:
            registered, _ = log_and_register_model(
                model,
                spec,
                split.x_train,
                run_id=run.info.run_id,
                data_version="notebook",
                metrics=evaluate_model(model, split, spec).flat_metrics(),
                extra_tags={"registered_by": "test notebook"},
            )
            if shuffle_labels:  # what candidate_model records: the batches the version trained on
                batches = [{"key": BAD_BATCH_KEY, "sha256": "0" * 64, "rows": len(frame)}]
                mlflow.log_dict(batches, "training_batches.json")
        version, tags = registered.version, {}
    for key, value in tags.items():
        if value:
            client.set_model_version_tag(MODEL, version, key, value)
    pass_gates(client, MODEL, str(version))  # the gate tags training_job writes; serving requires them
    return str(version)


def assert_zero_failed_predictions(deployment: Deployment) -> None:
    traffic = deployment.traffic
    assert traffic.predictions_ok > 50, traffic.summary()
    assert traffic.predictions_failed == 0, traffic.summary()


def assert_rolled_back(platform: Platform, deployment: Deployment, before: dict[str, Any], reason: str) -> None:
    """Rollback with stable untouched: same aliases, same stable process and version, canary gone."""
    assert deployment.value("decision") == "rejected", deployment.value("reason")
    assert reason in deployment.value("reason"), deployment.value("reason")
    assert deployment.check_passed is False
    assert deployment.tags["deployment_status"] == "rejected"
    assert reason in deployment.tags["deployment.reason"] and reason in deployment.tags["rejected_reason"]
    assert aliases() == before["aliases"]
    assert "challenger" not in registry_client().get_model_version(MODEL, deployment.version).aliases
    # The Partitions view shows the rejection: the partition failed (it does not read as materialized).
    status = platform.instance.get_status_by_partition(
        dg.AssetKey([PLATFORM_MODEL, "canary_deployment"]),
        [deployment.version],
        dg.DynamicPartitionsDefinition(name=f"{PLATFORM_MODEL}_model_versions"),
    )
    assert status is not None and status[deployment.version] == dg.AssetPartitionStatus.FAILED, status
    state = platform.state()
    assert state.canary is None and state.canary_weight == 0
    assert (state.stable.pid, state.stable.version) == (before["stable_pid"], before["aliases"]["champion"])
    assert stable_health(platform)["model"]["serving_versions"] == [before["aliases"]["champion"]]
    assert any(key.startswith("step_1_weight_10") for key in deployment.metadata)
    assert_zero_failed_predictions(deployment)
    assert deployment.traffic.by_track["stable"] > 0


def supervised(platform: Platform, record: Any) -> SupervisorStatus:
    """The supervisor status of a track's process record."""
    path = platform.home / "deployments" / PLATFORM_MODEL / "run" / f"{record.track}-{record.port}" / "supervisor.json"
    status = SupervisorStatus.read(path)
    assert status is not None, path
    return status


def snapshot(platform: Platform) -> dict[str, Any]:
    return {"aliases": aliases(), "stable_pid": platform.state().stable.pid}


def report(name: str, deployment: Deployment, **extra: Any) -> None:
    timings = {
        key: deployment.value(key)
        for key in deployment.metadata
        if key.endswith("_seconds") and isinstance(deployment.value(key), float)
    }
    record_report(
        name,
        version=deployment.version,
        decision=deployment.value("decision"),
        reason=deployment.value("reason"),
        traffic=deployment.traffic.as_dict(),
        timings=timings,
        **extra,
    )


# -- the tests ------------------------------------------------------------------------------------


def test_first_validated_version_goes_straight_to_stable_as_champion(deployed: Platform) -> None:
    first = deployed.first
    assert first is not None and first.version == "1"
    assert first.value("decision") == "promoted"
    assert "no champion yet" in first.value("reason")
    assert first.check_passed
    assert first.tags["deployment_status"] == "promoted"
    assert aliases() == {"champion": "1", "previous_champion": None}
    state = deployed.state()
    assert state.stable.version == "1" and state.canary is None
    answer = httpx.post(f"{deployed.url}/predict", json={"features": [[5.1, 3.5, 1.4, 0.2]]}, timeout=10).json()
    assert (answer["track"], answer["model_version"]) == ("stable", "1")
    report("first_deployment", first)


def test_good_candidate_is_promoted_on_prometheus_metrics_without_failed_requests(deployed: Platform) -> None:
    if deployed.prometheus_url is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    version = register(params={"n_estimators": 40, "max_depth": 4, "random_state": 7})
    stable_pid = deployed.state().stable.pid
    prometheus = MetricSource(backend="prometheus", prometheus_url=deployed.prometheus_url)

    deployment = deployed.deploy(metric_source=prometheus)

    assert deployment.value("decision") == "promoted", deployment.value("reason")
    assert deployment.check_passed
    assert deployment.value("metric_source").startswith("Prometheus at")
    assert aliases() == {"champion": version, "previous_champion": "1"}
    state = deployed.state()
    assert state.canary is None and state.stable.pid == stable_pid and state.stable.version == version
    assert stable_health(deployed)["model"]["serving_versions"] == [version]
    assert deployment.traffic.by_track["canary"] > 0 and deployment.traffic.by_version[version] > 0
    assert_zero_failed_predictions(deployment)
    assert deployment.traffic.feedback_failed == 0, deployment.traffic.summary()
    # every step recorded, judged on samples Prometheus returned for the canary
    for step, weight in enumerate(TEST_POLICY["steps"], start=1):
        table = deployment.value(f"step_{step}_weight_{weight}")
        assert "**pass**" in table.splitlines()[-1]
    assert deployment.tags["deployment_status"] == "promoted"
    assert "weight=50% outcome=passed" in deployment.tags["deployment.step_3"]
    overhead = deployment.value("decision_overhead_seconds")
    assert 0 < overhead < deployment.value("validated_to_decision_seconds")
    report("promotion", deployment, metric_source="prometheus")


def test_promql_answers_match_the_scraped_metrics(deployed: Platform) -> None:
    """With traffic stopped and Prometheus caught up, both metric sources read identical counters."""
    if deployed.prometheus_url is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    TrafficSimulator(deployed.url, rate=RATE).run(3.0)
    time.sleep(3.0)  # > 2 scrape intervals
    targets = [f"http://127.0.0.1:{deployed.state().stable.port}/metrics"]
    prometheus = MetricSource(backend="prometheus", prometheus_url=deployed.prometheus_url)
    compared = 0
    for version in {aliases()["champion"], aliases()["previous_champion"]}:
        scraped = MetricSource().read("stable", version, targets)
        queried = prometheus.read("stable", version, [])
        assert scraped.reachable and queried.reachable
        assert scraped.requests > 0
        for attribute in ("requests", "errors", "latency_buckets", "feedback_correct", "feedback_incorrect"):
            assert getattr(queried, attribute) == getattr(scraped, attribute), attribute
        compared += 1
    assert compared == 2


def test_manual_rollback_returns_to_the_previous_champion_without_failed_requests(deployed: Platform) -> None:
    before = aliases()
    assert before["previous_champion"] is not None
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DEPLOY_PUBLIC_PORT": str(deployed.public_port)}
    with TrafficSimulator(deployed.url, rate=RATE) as simulator:
        time.sleep(1.0)
        done = subprocess.run(
            [sys.executable, "-m", "ml_platform.cli", "rollback", "--reason", "test"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        time.sleep(1.0)
    traffic = simulator.report
    assert done.returncode == 0, done.stderr
    assert f"champion v{before['champion']} -> v{before['previous_champion']}" in done.stdout
    assert aliases() == {"champion": before["previous_champion"], "previous_champion": None}
    assert stable_health(deployed)["model"]["serving_versions"] == [before["previous_champion"]]
    tags = registry_client().get_model_version(MODEL, before["champion"]).tags
    assert tags["deployment_status"] == "rolled_back_manually"
    assert traffic.predictions_failed == 0 and traffic.feedback_failed == 0, traffic.summary()
    assert traffic.by_version[before["previous_champion"]] > 0
    status = subprocess.run(
        [sys.executable, "-m", "ml_platform.cli", "status", "--model", PLATFORM_MODEL],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"stable serves:  {before['previous_champion']}" in status.stdout
    record_report("manual_rollback", traffic=traffic.as_dict())


def test_bad_model_is_rolled_back_on_live_accuracy(deployed: Platform) -> None:
    before = snapshot(deployed)
    version = register(shuffle_labels=True)
    deployment = deployed.deploy()
    assert_rolled_back(deployed, deployment, before, "live_accuracy")
    # The rejection names what the version trained on and the one command that retracts it all.
    command = f"python -m ml_platform.cli retract --model {PLATFORM_MODEL} --trained-into {version}"
    assert BAD_BATCH_KEY in deployment.value("trained_on_batches"), deployment.metadata
    assert deployment.value("retract_command").startswith(command)
    assert registry_client().get_model_version(MODEL, version).tags["rejected_retract_command"].startswith(command)
    assert deployment.traffic.feedback_failed == 0, deployment.traffic.summary()
    report("fault_bad_model", deployment)


def test_canary_crash_mid_rollout_is_rolled_back(deployed: Platform) -> None:
    before = snapshot(deployed)
    register(copy_of="1")
    killed: list[int] = []

    def crash(state: Any) -> None:
        # SIGKILL the serving process (not its supervisor): it comes back, and must still fail the canary
        serving = supervised(deployed, state.canary).child_pid
        os.kill(serving, signal.SIGKILL)
        killed.extend([serving, state.canary.pid])

    deployment = deployed.deploy(inject=crash)
    assert_rolled_back(deployed, deployment, before, "canary unhealthy")
    assert "restarted" in deployment.value("reason") or "unreachable" in deployment.value("reason")
    assert not pid_alive(killed[0]) and not pid_alive(killed[1])  # the retired canary's supervisor is gone too
    # Feedback for answers the dead canary gave cannot be recorded anywhere: the only failures allowed.
    lost = [f for f in deployment.traffic.failures if "feedback" in f]
    assert all("track canary" in f or "Connect" in f for f in lost), lost
    report("fault_crash", deployment, feedback_lost=deployment.traffic.feedback_failed)


def test_canary_answering_5xx_is_rolled_back(deployed: Platform) -> None:
    before = snapshot(deployed)
    register(copy_of="1")

    def fail(state: Any) -> None:
        assert _PROXY is not None
        _PROXY.mode = "error"

    deployment = deployed.deploy(deployer=deployed.deployer(proxied=True), inject=fail)
    assert _PROXY is not None and _PROXY.injected > 0
    assert_rolled_back(deployed, deployment, before, "error_rate")
    assert "router" in deployment.value("reason")  # the router saw what the canary's own metrics could not
    assert deployment.traffic.feedback_failed == 0, deployment.traffic.summary()
    report("fault_5xx", deployment, injected=_PROXY.injected)


def test_slow_canary_is_rolled_back(deployed: Platform) -> None:
    before = snapshot(deployed)
    register(copy_of="1")

    def slow(state: Any) -> None:
        assert _PROXY is not None
        _PROXY.delay, _PROXY.mode = 2.0, "slow"

    deployment = deployed.deploy(deployer=deployed.deployer(proxied=True), inject=slow)
    assert_rolled_back(deployed, deployment, before, "p95_latency")
    assert deployment.traffic.feedback_failed == 0, deployment.traffic.summary()
    report("fault_slow", deployment)


# -- supervision and the deployment lock (run last: they restart and finally stop the deployment) ---------


def cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DEPLOY_PUBLIC_PORT": str(platform.public_port)}
    command = [sys.executable, "-m", "ml_platform.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def api_server_pid(supervisor_pid: int, serving_pid: int) -> int:
    """The serving process's API server: its child that runs ``-m serving`` too (workers are spawned)."""
    for pid in group_members(supervisor_pid):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if parent == serving_pid and command.rstrip().endswith("-m serving"):
            return pid
    raise AssertionError(f"no API server under serving process {serving_pid}")


def wait_restarted(platform: Platform, record: Any, restarts: int, timeout: float = 90.0) -> float:
    """Seconds until the supervisor reports ``restarts`` and the track answers /health again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = supervised(platform, record)
        if status.restarts >= restarts and status.state == "running":
            try:
                if httpx.get(f"{record.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"not restarted within {timeout:.0f}s: {supervised(platform, record)}")


def test_killed_serving_processes_are_restarted_by_their_supervisor(deployed: Platform) -> None:
    """The stable track, started by a process that then exits, survives kill -9 of its API server and of the
    serving process: the supervisor restarts it on the same port, traffic through nginx recovers, `cli status`
    shows the restarts and the last exit."""
    champion = aliases()["champion"]
    assert champion is not None
    LocalDeployer(public_port=deployed.public_port).backend_for(PLATFORM_MODEL).shutdown()
    starter = (
        "from ml_platform.deployment.deployer import LocalDeployer; "
        f"LocalDeployer(public_port={deployed.public_port}, stable_refresh_seconds=300)"
        f".backend_for({PLATFORM_MODEL!r}).ensure_stable({champion!r}, 240)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", starter], env=env, check=True, timeout=300)  # ... and exits
    stable = deployed.state().stable
    parent = int(Path(f"/proc/{stable.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent != os.getpid()  # the supervisor outlived the process that started it (reparented)

    measured: dict[str, Any] = {}
    with TrafficSimulator(deployed.url, rate=RATE) as simulator:
        time.sleep(1.0)
        for restarts, victim in ((1, "api_server"), (2, "serving")):
            status = supervised(deployed, stable)
            pid = api_server_pid(stable.pid, status.child_pid) if victim == "api_server" else status.child_pid
            failed_before = simulator.report.predictions_failed
            os.kill(pid, signal.SIGKILL)
            measured[f"{victim}_restart_seconds"] = round(wait_restarted(deployed, stable, restarts), 2)
            time.sleep(1.5)  # traffic flows again through nginx
            measured[f"{victim}_failed_predictions"] = simulator.report.predictions_failed - failed_before
    traffic = simulator.report
    status = supervised(deployed, stable)
    assert status.restarts == 2 and status.state == "running"
    assert "SIGKILL" in status.last_exit_reason or "exited with code" in status.last_exit_reason
    assert deployed.state().stable.pid == stable.pid and deployed.state().stable.port == stable.port
    # every failure fell inside an outage: bounded by the outages' length at the offered rate
    outage = measured["api_server_restart_seconds"] + measured["serving_restart_seconds"]
    assert traffic.predictions_failed <= RATE * (outage + 2), (measured, traffic.summary())
    assert traffic.predictions_ok > 50, traffic.summary()
    with httpx.Client(timeout=10) as client:  # recovered: nothing fails now
        for _ in range(20):
            answer = client.post(f"{deployed.url}/predict", json={"features": [[5.1, 3.5, 1.4, 0.2]]})
            assert answer.status_code == 200 and answer.json()["model_version"] == champion, answer.text
    shown = cli(deployed, "status", "--model", PLATFORM_MODEL)
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.startswith("stable:"))
    assert "restarts 2" in line and "last exit" in line and "supervisor running" in line, line
    record_report("supervisor_restarts", traffic=traffic.as_dict(), **measured)
    print(f"supervisor restarts: {measured}; {traffic.summary()}")


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from ml_platform.deployment.state import StateStore
with StateStore(Path(sys.argv[1])).lock(holder="canary rollout of iris-random-forest v99 (Dagster run test-run)"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_cli_stop_and_rollback_take_the_deployment_lock(deployed: Platform) -> None:
    """With a rollout holding the lock (a real other process), stop and rollback refuse naming it and change
    nothing; status shows the holder; stop --force breaks the lock, says what that leaves, and stops."""
    client = registry_client()
    before = aliases()
    client.set_registered_model_alias(MODEL, "previous_champion", "1")  # something to roll back to
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    folder = deployed.home / "deployments" / PLATFORM_MODEL
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(folder)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        stopped = cli(deployed, "stop")
        assert stopped.returncode == 3, stopped.stdout + stopped.stderr
        for part in (
            "stop refused",
            "canary rollout of iris-random-forest v99",
            f"pid {holder.pid}",
            "since",
            "--force",
        ):
            assert part in stopped.stderr, stopped.stderr
        rolled = cli(deployed, "rollback", "--wait", "1")
        assert rolled.returncode == 3 and "rollback refused" in rolled.stderr, rolled.stderr
        assert aliases() == {**before, "previous_champion": "1"}  # nothing moved
        answer = httpx.post(f"{deployed.url}/predict", json={"features": [[5.1, 3.5, 1.4, 0.2]]}, timeout=10)
        assert answer.status_code == 200  # nothing was stopped
        shown = cli(deployed, "status", "--model", PLATFORM_MODEL)
        assert "held by canary rollout of iris-random-forest v99" in shown.stdout, shown.stdout

        forced = cli(deployed, "stop", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "breaking the deployment lock held by canary rollout" in forced.stderr, forced.stderr
        assert "finds its processes gone" in forced.stderr, forced.stderr
        assert holder.poll() is None  # --force breaks the lock, not the holder
    finally:
        holder.kill()
        holder.wait(10)
        client.delete_registered_model_alias(MODEL, "previous_champion")
    assert deployed.state() is None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{deployed.url}/_deployment", timeout=2)

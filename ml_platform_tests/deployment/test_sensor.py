"""iris's model_version_sensor against a real MLflow registry (sqlite) and a real Dagster instance.

The versions here point at no artifacts: the sensor reads only tags and aliases.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest

from ml_platform.catalog import get_model
from ml_platform.defs.deployment import (
    PIPELINE_TAG,
    REQUESTED_AT_RUN_TAG,
    VALIDATED_AT_RUN_TAG,
)
from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import MlflowRegistryResource
from ml_platform.deployment.deployer import LocalDeployer
from ml_platform_tests.pipeline.helpers import defs_for_entry, registry_client

MODEL = "iris-random-forest"
IRIS = ModelContext(get_model("iris"))
SENSOR = defs_for_entry(IRIS.entry).resolve_sensor_def("iris_model_version_sensor")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("sensor-home")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "ML_PLATFORM_MODEL"):
            mp.delenv(name, raising=False)
        mp.setenv("ML_PLATFORM_HOME", str(home))
        client = registry_client()
        client.create_registered_model(MODEL)
        yield client
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def add_version(client: Any, validated: bool = True, **tags: str) -> str:
    status = {"validation_status": "passed" if validated else "pending"}
    version = client.create_model_version(MODEL, source=f"file:///nowhere/{len(tags)}", tags={**status, **tags})
    return str(version.version)


def evaluate(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"mlflow_registry": MlflowRegistryResource(), "deployer": LocalDeployer()},
    )
    result = SENSOR(context)
    assert isinstance(result, dg.SensorResult)
    return result


def skip(result: dg.SensorResult) -> str:
    return result.skip_reason.skip_message if result.skip_reason else ""


def test_sensor_requests_each_validated_version_once_and_supersedes_waiting_ones(registry: Any) -> None:
    with dg.instance_for_test() as instance:
        nothing = evaluate(instance, None)
        assert not nothing.run_requests and "no validated" in skip(nothing)

        first = add_version(registry)
        result = evaluate(instance, None)
        (request,) = result.run_requests
        assert (request.run_key, request.partition_key) == (f"{MODEL}:{first}", first)
        assert float(request.tags[VALIDATED_AT_RUN_TAG]) <= float(request.tags[REQUESTED_AT_RUN_TAG])
        (partitions,) = result.dynamic_partitions_requests
        assert partitions.partitions_def_name == "iris_model_versions" and list(partitions.partition_keys) == [first]
        assert result.cursor == first

        again = evaluate(instance, result.cursor)  # no double deploy
        assert not again.run_requests

        registry.set_registered_model_alias(MODEL, "champion", first)  # the first deployment made it champion
        pending = add_version(registry, validated=False)  # gates not passed (yet)
        older = add_version(registry)
        newer = add_version(registry)  # e.g. registered from a notebook and tagged validated by hand
        result = evaluate(instance, result.cursor)
        (request,) = result.run_requests
        assert request.partition_key == newer and result.cursor == newer
        tags = {v: registry.get_model_version(MODEL, v).tags for v in (pending, older, newer)}
        assert tags[older]["deployment_status"] == "superseded"
        assert tags[older]["deployment.superseded_by"] == newer
        assert "deployment_status" not in tags[pending] and "deployment_status" not in tags[newer]


def test_sensor_waits_while_a_deployment_runs(registry: Any) -> None:
    from dagster._core.storage.dagster_run import DagsterRun

    version = add_version(registry)
    with dg.instance_for_test() as instance:
        running = {**IRIS.tags, PIPELINE_TAG: "deployment"}
        instance.add_run(
            DagsterRun(job_name="iris_canary_deployment_job", status=dg.DagsterRunStatus.STARTED, tags=running)
        )
        busy = evaluate(instance, "0")
        assert not busy.run_requests and "still active" in skip(busy)

    with dg.instance_for_test() as instance:
        registry.set_registered_model_alias(MODEL, "champion", version)
        older_than_champion = evaluate(instance, "0")  # nothing newer than the champion waits
        assert not older_than_champion.run_requests


def test_versions_that_did_not_pass_the_gates_are_ignored(registry: Any) -> None:
    validated = add_version(registry)
    add_version(registry, validated=False)
    add_version(registry, validated=False)
    with dg.instance_for_test() as instance:
        (request,) = evaluate(instance, str(int(validated) - 1)).run_requests
        assert request.partition_key == validated
        assert not evaluate(instance, validated).run_requests


# -- crash safety: a rollout record whose run died ------------------------------------------------


def record_of(run_id: str, owner: dict[str, Any] | None, version: str = "5", **fields: Any) -> Any:
    from ml_platform.deployment.rollout_state import RolloutRecord

    return RolloutRecord(
        model="iris",
        version=version,
        phase="progressing",
        step=1,
        weight=10,
        run_id=run_id,
        owner=owner,
        champion="4",
        **fields,
    )


def dead_owner() -> dict[str, Any]:
    import json
    import subprocess
    import sys

    code = "from ml_platform.deployment.state import LockHolder; print(LockHolder.me('x').dump())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def test_a_rollout_whose_process_died_is_resumed_and_its_run_marked_failed(registry: Any) -> None:
    from dagster._core.storage.dagster_run import DagsterRun

    from ml_platform.deployment.rollout_state import FileRolloutStateStore, RolloutRecord
    from ml_platform.settings import platform_paths

    store = FileRolloutStateStore(platform_paths().deployments_root)
    with dg.instance_for_test() as instance:
        tags = {**IRIS.tags, PIPELINE_TAG: "deployment"}
        dead = instance.add_run(
            DagsterRun(job_name="iris_canary_deployment_job", status=dg.DagsterRunStatus.STARTED, tags=tags)
        )
        live = RolloutRecord(model="iris", version="5", phase="progressing", run_id=dead.run_id)
        live.claim(dead.run_id, "this test process")  # a live driver: wait
        store.save(live)
        waiting = evaluate(instance, "0")
        assert not waiting.run_requests and "rollout in progress" in skip(waiting)

        store.save(record_of(dead.run_id, dead_owner()))  # its process is gone
        result = evaluate(instance, "0")
        (request,) = result.run_requests
        assert request.partition_key == "5" and request.run_key == f"{MODEL}:5:resume:{dead.run_id}:0"
        assert request.tags["ml_platform/resume_of"] == dead.run_id
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE

        instance.add_run(  # the resume run is starting: wait for it, request nothing more
            DagsterRun(
                job_name="iris_canary_deployment_job",
                status=dg.DagsterRunStatus.STARTING,
                tags={**tags, "ml_platform/resume_of": dead.run_id},
            )
        )
        assert "taking over" in skip(evaluate(instance, "0"))

    with dg.instance_for_test() as instance:
        other_host = {**dead_owner(), "host": "another-node"}
        run = instance.add_run(
            DagsterRun(job_name="iris_canary_deployment_job", status=dg.DagsterRunStatus.STARTED, tags=tags)
        )
        store.save(record_of(run.run_id, other_host))  # fresh heartbeat, run active: in progress
        assert "rollout in progress" in skip(evaluate(instance, "0"))
        stale = record_of(run.run_id, other_host)
        store.save(stale)
        raw = store.path("iris").read_text().replace(f'"updated": {stale.updated}', '"updated": 1.0')
        store.path("iris").write_text(raw)  # no heartbeat for decades
        (request,) = evaluate(instance, "0").run_requests
        assert request.partition_key == "5"
    store.clear("iris")


def test_a_malformed_rollout_policy_fails_the_definitions_load_with_the_key_named() -> None:
    from dataclasses import replace

    from ml_platform.defs.deployment import build_deployment_defs

    entry = IRIS.entry
    bad = replace(entry, spec=replace(entry.spec, rollout={"metrics": [{"metric": "latency", "max_ms": -1}]}))
    with pytest.raises(dg.DagsterInvalidDefinitionError, match=r"model iris: .*rollout.metrics\[latency\]"):
        build_deployment_defs(ModelContext(bad))

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

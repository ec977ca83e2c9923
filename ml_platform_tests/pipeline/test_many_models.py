"""Two models (iris, wine) in ONE Dagster instance and ONE MLflow store stay apart.

Each model trains through its own sensor, partitions and job; nothing one model records (landed-file
partitions, asset materializations, MLflow experiment, registered versions, aliases, landing folders,
snapshots) shows up under the other, and a failing gate of one leaves the other's runs and aliases as
they were.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ml_platform.catalog import get_model
from ml_platform.ml.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS
from ml_platform.spec import load_spec_file
from ml_platform_tests.pipeline.helpers import (
    check_outcomes,
    code_location,
    defs_for_entry,
    incoming_sensor,
    landing_resource,
    landing_zone,
    materialized,
    model_versions,
    registry_client,
    run_training,
)

pytestmark = pytest.mark.slow

REGISTERED = {"iris": "iris-random-forest", "wine": "wine-gradient-boosting"}
TRAINING_ASSETS = {
    "raw_batch",
    "evaluation_set",
    "training_dataset",
    "candidate_model",
    "reference_snapshot",
    "landing_report",
}


def _land_and_train(instance: dg.DagsterInstance, model: str) -> tuple[str, dg.ExecuteInProcessResult]:
    """Tick the model's incoming-data sensor on a fresh home (its bundled file lands) and run what it asks."""
    context = dg.build_sensor_context(instance=instance, resources={"landing_zone": landing_resource()})
    tick = incoming_sensor(model)(context)
    assert isinstance(tick, dg.SensorResult)
    (request,) = tick.run_requests or []
    assert request.tags["ml_platform/model"] == model
    (partitions,) = tick.dynamic_partitions_requests or []
    assert partitions.partitions_def_name == f"{model}_landed_files"
    instance.add_dynamic_partitions(partitions.partitions_def_name, list(partitions.partition_keys))
    return request.partition_key, run_training(instance, request.partition_key, model=model)


def _weak(model: str, tmp_path: Path) -> dg.Definitions:
    """The model's definitions with a trivial estimator: its metric gate fails."""
    entry = get_model(model)
    raw = yaml.safe_load((entry.source.parent / "spec.yaml").read_text())
    raw["model"].update(estimator="sklearn.dummy.DummyClassifier", params={"strategy": "most_frequent"})
    path = tmp_path / f"{model}_weak.yaml"
    path.write_text(yaml.safe_dump(raw))
    return defs_for_entry(dataclasses.replace(entry, spec=load_spec_file(path)))


def _candidate_runs(instance: dg.DagsterInstance, model: str) -> list[str]:
    records = instance.fetch_materializations(dg.AssetKey([model, "candidate_model"]), limit=100).records
    return sorted(r.run_id for r in records)


def test_two_models_in_one_instance_and_store_keep_separate_histories(platform_home: Path, tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        keys, runs = {}, {}
        for model in ("iris", "wine"):
            keys[model], result = _land_and_train(instance, model)
            assert result.success, check_outcomes(result)
            assert materialized(result, model) == TRAINING_ASSETS  # nothing of the other model ran
            assert result.dagster_run.tags["ml_platform/model"] == model
            runs[model] = result.run_id

        # partitions: each model's landed file is a partition of its own definition only
        assert instance.get_dynamic_partitions("iris_landed_files") == [keys["iris"]]
        assert instance.get_dynamic_partitions("wine_landed_files") == [keys["wine"]]
        assert keys["iris"].startswith("iris.csv@") and keys["wine"].startswith("wine.csv@")
        # materializations: under each model's keys, from that model's run only
        assert _candidate_runs(instance, "iris") == [runs["iris"]]
        assert _candidate_runs(instance, "wine") == [runs["wine"]]
        raw_iris = instance.get_materialized_partitions(dg.AssetKey(["iris", "raw_batch"]))
        raw_wine = instance.get_materialized_partitions(dg.AssetKey(["wine", "raw_batch"]))
        assert raw_iris == {keys["iris"]} and raw_wine == {keys["wine"]}
        # the code location has no unnamespaced asset left over
        assert all(len(k.path) == 2 for k in code_location().resolve_all_asset_keys())

        # registry: one version per registered name, tagged with its model, in its own experiment
        client = registry_client()
        for model, name in REGISTERED.items():
            (version,) = model_versions(name)
            assert version.tags["ml_platform/model"] == model
            assert version.tags["dagster_run_id"] == runs[model]
            assert version.tags["validation_status"] == "passed"
            run = client.get_run(version.run_id)
            assert client.get_experiment(run.info.experiment_id).name == f"ml_platform-{model}"
            assert f"/{name}/v1/" in version.tags["reference_snapshot_uri"]
            client.set_registered_model_alias(name, CHAMPION_ALIAS, "1")  # both in production

        # landing folders hold each model's own file only
        assert [p.name.split("@")[0] for p in landing_zone("iris").accepted_files()] == ["iris"]
        assert [p.name.split("@")[0] for p in landing_zone("wine").accepted_files()] == ["wine"]

        # a failing gate of wine: wine's version is rejected, iris is untouched
        failed = run_training(instance, model="wine", defs=_weak("wine", tmp_path))
        assert not failed.success
        assert check_outcomes(failed)["meets_metric_thresholds"] is False
        assert "reference_snapshot" not in materialized(failed, "wine")
        rejected = client.get_model_version(REGISTERED["wine"], "2")
        assert rejected.tags["gate.metric_thresholds"] == "failed"
        assert rejected.tags["validation_status"] == "failed"
        assert rejected.tags["ml_platform/model"] == "wine"

        assert [str(v.version) for v in model_versions(REGISTERED["iris"])] == ["1"]
        iris_aliases = {k: str(v) for k, v in client.get_registered_model(REGISTERED["iris"]).aliases.items()}
        assert iris_aliases == {CHAMPION_ALIAS: "1", CHALLENGER_ALIAS: "1"}
        assert _candidate_runs(instance, "iris") == [runs["iris"]]
        iris_run = instance.get_run_by_id(runs["iris"])
        assert iris_run is not None and iris_run.status == dg.DagsterRunStatus.SUCCESS
        assert str(client.get_model_version_by_alias(REGISTERED["wine"], CHAMPION_ALIAS).version) == "1"

        # and iris keeps training on while wine's last candidate stays rejected
        again = run_training(instance, model="iris")
        assert again.success, check_outcomes(again)
        assert [str(v.version) for v in model_versions(REGISTERED["iris"])] == ["1", "2"]
        assert [str(v.version) for v in model_versions(REGISTERED["wine"])] == ["1", "2"]
        assert CHALLENGER_ALIAS not in client.get_registered_model(REGISTERED["wine"]).aliases
        assert _candidate_runs(instance, "wine") == sorted([runs["wine"], failed.run_id])

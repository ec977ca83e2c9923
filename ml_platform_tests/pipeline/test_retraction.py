"""Retraction of landed batches: real landing zone, real batch gate, real Dagster instance, real MLflow store.

A retracted batch leaves ``accepted/`` for ``retracted/`` with its reason, its ``raw_batch`` partition
records ``status=retracted``, and the next ``training_dataset`` leaves it out (new data version). Keys
are validated like every landing-zone key: a retraction of ``../x`` is refused and moves nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from ml_platform import cli
from ml_platform.catalog import get_model
from ml_platform.defs.evaluation import build_evaluation_defs
from ml_platform.defs.ingestion import build_ingestion_defs
from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import JsonIOManager, MlflowRegistryResource
from ml_platform.defs.retraction import build_retraction_defs
from ml_platform.validation.landing_zone import InvalidKeyError, ModelLandingZone, UnknownBatchError
from ml_platform.validation.retraction import retract_batches, training_batches
from ml_platform_tests.pipeline.helpers import age, landing_resource, landing_zone, registry_client
from ml_platform_tests.validation.bad_files import GOOD_ROWS, write_good_file

OTHER_ROWS = [f"{7.0 + i * 0.01:.2f},3.0,5.5,2.0,2" for i in range(10)] + GOOD_ROWS[:10]


def _land(zone: ModelLandingZone, name: str, rows: list[str] | None = None) -> None:
    age(write_good_file(zone.incoming_dir, name, rows))


def _accept_all(zone: ModelLandingZone) -> list[str]:
    """Run the real batch gate over incoming/; the accepted partition keys."""
    from ml_platform.validation.gate import process

    spec = get_model(zone.model).spec
    outcomes = [process(zone.folders, landed, spec) for landed in zone.pending_files()]
    assert all(o.status == "accepted" for o in outcomes), [o.problems for o in outcomes]
    return [o.partition_key for o in outcomes]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_retract_moves_the_batch_with_its_record_and_is_idempotent(platform_home: Path) -> None:
    zone = landing_zone()
    _land(zone, "good.csv")
    (key,) = _accept_all(zone)
    record = zone.retract(key, "  labels rotated\n by the export job ", actor="test:alice", version="3")
    assert not zone.accepted_files()
    moved = zone.retracted_dir / Path(record.path).name
    assert moved.is_file() and record.path == str(moved)
    on_disk = json.loads((zone.retracted_dir / (moved.name + ".retraction.json")).read_text())
    assert on_disk["reason"] == "labels rotated by the export job"
    assert on_disk["actor"] == "test:alice" and on_disk["version"] == "3" and on_disk["key"] == key
    assert not record.already_retracted

    again = zone.retract(key, "another reason", actor="test:bob")
    assert again.already_retracted and again.reason == "labels rotated by the export job"
    assert again.actor == "test:alice" and again.retracted_at == record.retracted_at
    assert moved.is_file() and zone.retraction_of(key) == again


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "../accepted@" + "0" * 64,
        "..@" + "a" * 64,
        "sub/dir.csv@" + "a" * 64,
        "/etc/passwd@" + "a" * 64,
        ".hidden.csv@" + "a" * 64,
        "good.csv@" + "A" * 64,
        "good.csv@abc",
        "good\x00.csv@" + "a" * 64,
    ],
)
def test_a_retraction_of_a_key_outside_the_landing_zone_is_refused(platform_home: Path, key: str) -> None:
    zone = landing_zone()
    _land(zone, "good.csv")
    _accept_all(zone)
    # a file the attack would reach if a key were joined to a path unchecked
    outside = platform_home / "data" / "x"
    outside.write_text("not a batch")
    before = _tree(platform_home)
    with pytest.raises(InvalidKeyError):
        zone.retract(key, "attack", actor="attacker")
    with pytest.raises(InvalidKeyError, match="nothing retracted"):
        retract_batches(zone, [key], "attack", actor="attacker")
    assert _tree(platform_home) == before and outside.read_text() == "not a batch"
    assert len(zone.accepted_files()) == 1


def test_unknown_and_quarantined_keys_are_refused_and_one_bad_key_retracts_nothing(platform_home: Path) -> None:
    zone = landing_zone()
    _land(zone, "good.csv")
    (key,) = _accept_all(zone)
    missing = "good.csv@" + "b" * 64
    with pytest.raises(UnknownBatchError, match="no accepted batch"):
        zone.retract(missing, "why", actor="t")
    with pytest.raises(UnknownBatchError, match="nothing retracted"):
        retract_batches(zone, [key, missing], "why", actor="t")
    assert len(zone.accepted_files()) == 1  # the good key did not move either
    with pytest.raises(ValueError, match="needs a reason"):
        zone.retract(key, "   ", actor="t")
    assert len(zone.accepted_files()) == 1

    (zone.incoming_dir / "bad.csv").write_text("a,b\n1,2\n")
    age(zone.incoming_dir / "bad.csv")
    from ml_platform.validation.gate import process

    (outcome,) = [process(zone.folders, f, get_model("iris").spec) for f in zone.pending_files()]
    assert outcome.status == "quarantined"
    with pytest.raises(UnknownBatchError, match="quarantined by the batch gate, never accepted"):
        zone.retract(outcome.partition_key, "why", actor="t")


def test_retracted_content_landed_again_is_quarantined_with_the_retraction(platform_home: Path) -> None:
    zone = landing_zone()
    _land(zone, "good.csv")
    (key,) = _accept_all(zone)
    zone.retract(key, "bad labels", actor="t")
    _land(zone, "copy-of-good.csv")  # same content, another name
    from ml_platform.validation.gate import process

    (outcome,) = [process(zone.folders, f, get_model("iris").spec) for f in zone.pending_files()]
    assert outcome.status == "quarantined"
    assert f"was retracted as {key}" in outcome.problems[0]
    assert not zone.accepted_files()


def test_cli_retracts_by_key_and_refuses_a_traversal_key(platform_home: Path, capsys: pytest.CaptureFixture) -> None:
    zone = landing_zone()
    _land(zone, "good.csv")
    _land(zone, "other.csv", OTHER_ROWS)
    keys = _accept_all(zone)
    assert cli.main(["retract", "--model", "iris", "../x", keys[0], "--reason", "attack"]) == 2
    assert "retract refused" in capsys.readouterr().err
    assert len(zone.accepted_files()) == 2
    assert cli.main(["retract", "--model", "iris", keys[0], "--reason", "duplicated export"]) == 0
    out = capsys.readouterr().out
    assert f"retracted {keys[0]}" in out and "1 batch(es) retracted" in out
    assert len(zone.accepted_files()) == 1
    assert cli.main(["retract", "--model", "iris", keys[0], "--reason", "again"]) == 0
    assert "already retracted" in capsys.readouterr().out
    record = zone.retraction_of(keys[0])
    assert record is not None and record.actor.startswith("cli:") and record.reason == "duplicated export"


def _register_version_trained_on(keys: list[str], name: str) -> str:
    """A real registered version whose run records ``training_batches.json`` (interface 1 of round 3)."""
    import tempfile

    client = registry_client()
    experiment = client.create_experiment("retraction-test")
    run = client.create_run(experiment)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "training_batches.json"
        path.write_text(json.dumps([{"key": k, "sha256": k.rsplit("@", 1)[1], "rows": 20} for k in keys]))
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    return str(version.version)


def test_cli_retracts_every_batch_a_version_trained_on(platform_home: Path, capsys: pytest.CaptureFixture) -> None:
    zone = landing_zone()
    _land(zone, "good.csv")
    _land(zone, "other.csv", OTHER_ROWS)
    keys = _accept_all(zone)
    name = get_model("iris").spec.model.name
    version = _register_version_trained_on(keys[:1], name)
    client = registry_client()
    assert training_batches(client, name, version) == keys[:1]
    assert cli.main(["retract", "--model", "iris", "--trained-into", version, "--reason", "canary rejected"]) == 0
    assert f"retracted {keys[0]}" in capsys.readouterr().out
    assert [p.name for p in zone.accepted_files()] == [Path(zone.locate(keys[1]).path).name]
    record = zone.retraction_of(keys[0])
    assert record is not None and record.version == version
    tags = client.get_model_version(name, version).tags
    assert tags["data.retracted_batches"] == "1" and tags["data.retraction_reason"] == "canary rejected"
    assert cli.main(["retract", "--model", "iris", "--trained-into", "999", "--reason", "x"]) == 2
    assert "no version" in capsys.readouterr().err


def test_retract_job_records_lineage_and_changes_the_next_training_dataset(platform_home: Path) -> None:
    model = ModelContext(get_model("iris"))
    zone = landing_zone()
    _land(zone, "good.csv")
    _land(zone, "other.csv", OTHER_ROWS)
    ingestion = build_ingestion_defs(model)
    by_name = {a.key.path[-1]: a for a in [*(ingestion.assets or []), *(build_evaluation_defs(model).assets or [])]}
    resources = {
        "landing_zone": landing_resource(),
        "json_io_manager": JsonIOManager(),
        "mlflow_registry": MlflowRegistryResource(),
    }

    def dataset_version(instance: dg.DagsterInstance) -> tuple[str, dict]:
        # training_dataset leaves out the evaluation set's rows, so both are materialised
        assets = [by_name["evaluation_set"], by_name["training_dataset"]]
        result = dg.materialize(assets, instance=instance, resources=resources)
        (event,) = [
            e for e in result.get_asset_materialization_events() if e.asset_key == by_name["training_dataset"].key
        ]
        return str(event.materialization.tags["dagster/data_version"]), result.output_for_node("iris__training_dataset")

    with dg.instance_for_test() as instance:
        sweep = dg.materialize([by_name["raw_batch"]], instance=instance, resources=resources)
        keys = sweep.output_for_node("iris__raw_batch")["accepted"]
        assert len(keys) == 2
        before, dataset = dataset_version(instance)
        assert dataset["rows"] + dataset["excluded_evaluation_rows"] == 40  # both batches, less the evaluation rows

        defs = dg.Definitions.merge(build_retraction_defs(model), dg.Definitions(resources=resources))
        job = defs.resolve_job_def("iris_retract_batch_job")
        config = {"ops": {"iris_retract_batches": {"config": {"keys": [keys[0]], "reason": "rotated labels"}}}}
        result = job.execute_in_process(run_config=config, instance=instance)
        assert result.success

        observations = [
            e.event_log_entry.asset_observation
            for e in instance.fetch_observations(dg.AssetKey(["iris", "raw_batch"]), limit=10).records
        ]
        (observation,) = [o for o in observations if o.partition == keys[0]]
        assert observation.metadata["status"].value == "retracted"
        assert observation.metadata["reason"].value == "rotated labels"
        assert observation.metadata["actor"].value == f"dagster run {result.run_id}"

        after, dataset = dataset_version(instance)
        assert after != before
        assert [batch["key"] for batch in dataset["batches"]] == [keys[1]]
        assert dataset["rows"] + dataset["excluded_evaluation_rows"] == 20

        bad = {"ops": {"iris_retract_batches": {"config": {"keys": ["../x"], "reason": "attack"}}}}
        refused = job.execute_in_process(run_config=bad, instance=instance, raise_on_error=False)
        assert not refused.success
        assert len(zone.accepted_files()) == 1
    assert os.listdir(zone.retracted_dir) and len(os.listdir(zone.retracted_dir)) == 2

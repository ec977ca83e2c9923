"""Landing files: the sensor, partitions per file, quarantine of bad files, and restarts."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from ml_platform.spec import load_spec
from ml_platform.validation.gate import process
from ml_platform.validation.landing_zone import ModelLandingZone
from ml_platform_tests.pipeline.helpers import (
    check_outcomes,
    incoming_sensor,
    landing_resource,
    landing_zone,
    materialized,
    model_versions,
    run_training,
)
from ml_platform_tests.validation.bad_files import BAD_FILES, GOOD_ROWS, write_bad_file, write_good_file


def _tick(instance: dg.DagsterInstance, cursor: str | None, zone: ModelLandingZone) -> dg.SensorResult:
    resources = {"landing_zone": landing_resource(zone.settle_seconds)}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = incoming_sensor(zone.model)(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _age(path: Path, seconds: float = 60) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_sensor_requests_one_run_per_new_file_and_survives_restarts(platform_home: Path) -> None:
    zone = landing_zone(settle_seconds=5)
    with dg.instance_for_test() as instance:
        first = _tick(instance, None, zone)
        # a fresh home is bootstrapped with the bundled iris file as its first batch
        assert [r.partition_key for r in first.run_requests] == [f"iris.csv@{zone.pending_files()[0].sha256}"]
        assert first.run_requests[0].run_key == first.run_requests[0].partition_key
        assert first.dynamic_partitions_requests[0].partition_keys == [first.run_requests[0].partition_key]

        again = _tick(instance, first.cursor, zone)
        assert again.run_requests == [] or again.run_requests is None
        # a "restarted" sensor resumes from its stored cursor: still nothing new
        restarted = _tick(instance, json.loads(json.dumps(first.cursor)), zone)
        assert not restarted.run_requests

        # files still being written (recent mtime) or temporary/hidden are not picked up
        fresh = write_good_file(zone.incoming_dir, "fresh.csv")
        (zone.incoming_dir / "upload.csv.part").write_text("partial")
        (zone.incoming_dir / ".hidden.csv").write_text("x")
        assert not _tick(instance, first.cursor, zone).run_requests
        _age(fresh)
        later = _tick(instance, first.cursor, zone)
        assert [r.partition_key.split("@")[0] for r in later.run_requests] == ["fresh.csv"]

        # once processed files leave incoming/, the cursor forgets them (bounded state)
        (zone.incoming_dir / "iris.csv").rename(zone.accepted_dir / "iris.csv")
        fresh.rename(zone.accepted_dir / "fresh.csv")
        assert json.loads(_tick(instance, later.cursor, zone).cursor)["in_flight"] == []


def test_same_file_name_with_new_content_is_a_new_partition(platform_home: Path) -> None:
    spec = load_spec()
    zone = landing_zone(settle_seconds=0)
    write_good_file(zone.incoming_dir, "daily.csv")
    (first,) = zone.pending_files()
    assert process(zone.folders, first, spec).status == "accepted"
    write_good_file(zone.incoming_dir, "daily.csv", rows=[*GOOD_ROWS[:-1], "5.0,3.0,1.0,0.1,0"])
    (second,) = zone.pending_files()
    assert first.partition_key != second.partition_key
    assert process(zone.folders, second, spec).status == "accepted"
    assert len(zone.accepted_files()) == 2, "the second file must not overwrite the first"
    assert zone.locate(first.partition_key).path != zone.locate(second.partition_key).path


@pytest.mark.slow
def test_every_kind_of_bad_file_is_quarantined_with_a_report_and_nothing_trains(platform_home: Path) -> None:
    zone = landing_zone(settle_seconds=0)
    zone.bootstrap(load_spec())
    (seed,) = zone.pending_files()
    assert process(zone.folders, seed, load_spec()).status == "accepted"  # some accepted history
    for name in BAD_FILES:
        _age(write_bad_file(zone.incoming_dir, name))
    with dg.instance_for_test() as instance:
        result = run_training(instance)  # sweep: every waiting file in one run
    assert not result.success
    assert check_outcomes(result) == {"batch_passes_expectation_suite": False}
    assert materialized(result) == {"raw_batch"}
    assert model_versions("iris-random-forest") == []

    assert not list(zone.incoming_dir.iterdir())
    for name, (content, expected_text) in BAD_FILES.items():
        stored = [p for p in zone.quarantine_dir.iterdir() if p.name.startswith(Path(name).stem + "@")]
        data = [p for p in stored if not p.name.endswith((".report.json", ".report.md"))]
        assert len(data) == 1, name
        assert data[0].read_bytes() == content, f"{name} must be kept byte for byte"
        report = json.loads(data[0].with_name(data[0].name + ".report.json").read_text())
        assert report["success"] is False and report["file"] == name
        markdown = data[0].with_name(data[0].name + ".report.md").read_text()
        assert "REJECTED" in markdown
        assert expected_text.lower() in (json.dumps(report) + markdown).lower(), name


@pytest.mark.slow
def test_a_bad_file_never_blocks_good_files_landing_after_it(platform_home: Path) -> None:
    zone = landing_zone(settle_seconds=0)
    with dg.instance_for_test() as instance:
        bootstrap_tick = _tick(instance, None, zone)
        (bootstrap_key,) = [r.partition_key for r in bootstrap_tick.run_requests]
        instance.add_dynamic_partitions("iris_landed_files", [bootstrap_key])
        assert run_training(instance, bootstrap_key).success

        _age(write_bad_file(zone.incoming_dir, "unknown_class.csv"), 120)
        _age(write_good_file(zone.incoming_dir, "more.csv"), 60)
        tick = _tick(instance, bootstrap_tick.cursor, zone)
        keys = [r.partition_key for r in tick.run_requests]
        assert [k.split("@")[0] for k in keys] == ["unknown_class.csv", "more.csv"]
        instance.add_dynamic_partitions("iris_landed_files", keys)

        bad_run = run_training(instance, keys[0])
        assert not bad_run.success
        assert check_outcomes(bad_run) == {"batch_passes_expectation_suite": False}
        assert len(model_versions("iris-random-forest")) == 1

        good_run = run_training(instance, keys[1])
        assert good_run.success, check_outcomes(good_run)

    assert len(model_versions("iris-random-forest")) == 2
    accepted = sorted(p.name.split("@")[0] for p in zone.accepted_files())
    assert accepted == ["iris", "more"]
    assert next(p.name for p in zone.quarantine_dir.iterdir() if p.suffix == ".csv").startswith("unknown_class@")

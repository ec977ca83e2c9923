"""Hostile input in the landing zone, against a real Dagster instance and real files.

Partition keys that point outside the landing zone, symbolic links, FIFOs, directories and
over-long names in incoming/, and accepted files edited after the gate accepted them.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import dagster as dg
import pytest

from ml_platform.catalog import get_model
from ml_platform.defs.ingestion import build_ingestion_defs
from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import JsonIOManager
from ml_platform.spec import load_spec
from ml_platform.validation.landing_zone import InvalidKeyError, ModelLandingZone
from ml_platform.validation.names import MAX_NAME_BYTES
from ml_platform_tests.pipeline.helpers import (
    age,
    check_outcomes,
    failure_messages,
    incoming_sensor,
    landing_resource,
    landing_zone,
    materialized,
    model_versions,
    run_training,
    spec_of,
)
from ml_platform_tests.validation.bad_files import GOOD_ROWS, HEADER, write_good_file


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FifoSentinel:
    """A FIFO whose writer blocks until someone opens it for reading: detects any read through a link."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.opened = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def _write(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the FIFO
        self.opened.set()
        os.close(fd)

    def release(self) -> None:
        """Unblock the writer (the test itself reads), so no thread is left behind."""
        if not self.opened.is_set():
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self.opened.wait(5)
            os.close(fd)
        self._thread.join(5)


@pytest.mark.parametrize(
    "make_key",
    [
        lambda outside, digest: f"../../outside/x.csv@{digest}",
        lambda outside, digest: f"../../../../../../../../etc/x@{digest}",
        lambda outside, digest: f"{outside}@{digest}",
    ],
    ids=["relative-traversal", "etc-traversal", "absolute-path"],
)
def test_a_traversal_key_is_refused_and_the_outside_file_is_untouched(platform_home: Path, make_key) -> None:
    outside = platform_home.parent / "outside" / "x.csv"
    outside.parent.mkdir(parents=True)
    content = (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n").encode()
    outside.write_bytes(content)
    key = make_key(outside, _sha(outside))
    zone = landing_zone()
    with pytest.raises(InvalidKeyError):
        zone.locate(key)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("iris_landed_files", [key])
        result = run_training(instance, key)
    assert not result.success
    assert "refused partition key" in failure_messages(result)
    assert "path separator" in failure_messages(result)
    assert outside.read_bytes() == content, "the outside file must be left exactly as it was"
    assert zone.accepted_files() == []
    assert not [p for p in zone.quarantine_dir.iterdir() if p.name.startswith("x")]


def test_a_key_with_an_empty_short_or_malformed_hash_matches_nothing(platform_home: Path) -> None:
    zone = landing_zone()
    landed = write_good_file(zone.incoming_dir, "a.csv")
    digest = _sha(landed)
    for key in ("a.csv@", f"a.csv@{digest[:12]}", f"a.csv@{digest.upper()}", "a.csv", f"a.csv@{digest}0", "@" + digest):
        with pytest.raises(InvalidKeyError):
            zone.locate(key)
    # a well-formed key whose hash is not the file's content does not match either
    with pytest.raises(FileNotFoundError):
        zone.locate(f"a.csv@{'0' * 64}")
    assert zone.locate(f"a.csv@{digest}").path == landed

    short_key = f"a.csv@{digest[:12]}"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("iris_landed_files", [short_key])
        result = run_training(instance, short_key)
    assert not result.success
    assert "64 lowercase hex digits" in failure_messages(result)
    assert landed.exists() and zone.accepted_files() == []


@pytest.mark.slow
def test_links_pipes_folders_and_long_names_are_quarantined_unread_and_the_good_file_trains(
    platform_home: Path,
) -> None:
    zone = landing_zone()
    incoming = zone.incoming_dir
    outside = platform_home.parent / "outside"
    outside.mkdir()
    # out-of-range values and an unknown class: it must never be trained on
    target = outside / "unvalidated.csv"
    target.write_text(HEADER + "\n" + "\n".join([*GOOD_ROWS, "99.0,3.0,1.0,0.1,7"]) + "\n")
    target_bytes = target.read_bytes()
    sentinel = FifoSentinel(outside / "sentinel")

    good = incoming / "good.csv"
    good.write_bytes(load_spec().bootstrap_path().read_bytes())  # all three classes: the model gates pass
    (incoming / "link.csv").symlink_to(target)
    (incoming / "sentinel.csv").symlink_to(sentinel.path)
    os.mkfifo(incoming / "pipe.csv")
    (incoming / "folder.csv").mkdir()
    long_name = "n" * (250 - len(".csv")) + ".csv"
    write_good_file(incoming, long_name)
    (incoming / "missing_column.csv").write_text(
        "sepal_length,sepal_width,petal_length,target\n"
        + "\n".join(r.rsplit(",", 2)[0] + "," + r[-1] for r in GOOD_ROWS)
    )
    for entry in incoming.iterdir():
        age(entry)
    good_bytes = good.read_bytes()

    try:
        with dg.instance_for_test() as instance:
            # the sensor lists every entry without opening links or pipes (a FIFO never hangs it)
            tick = incoming_sensor()(
                dg.build_sensor_context(instance=instance, resources={"landing_zone": landing_resource()})
            )
            assert isinstance(tick, dg.SensorResult) and len(tick.run_requests or []) == 7
            result = run_training(instance)
        assert not sentinel.opened.is_set(), "a link in incoming/ was followed and its target opened"
    finally:
        sentinel.release()

    outcomes = check_outcomes(result)
    assert not result.success, "rejected files must fail the run"
    assert outcomes["batch_passes_expectation_suite"] is False
    assert outcomes["every_landed_file_accepted"] is False
    for gate in ("meets_metric_thresholds", "no_regression_against_champion", "serving_smoke_test"):
        assert outcomes[gate] is True, gate
    assert {"training_dataset", "candidate_model", "reference_snapshot"} <= materialized(result)
    gate = next(e for e in result.get_asset_check_evaluations() if e.check_name == "batch_passes_expectation_suite")
    assert gate.severity == dg.AssetCheckSeverity.WARN
    assert gate.metadata["files_accepted"].value == 1 and gate.metadata["files_rejected"].value == 6
    (version,) = model_versions("iris-random-forest")
    assert version.tags["validation_status"] == "passed"

    # the model trained on the good file only, as it was copied (not linked)
    (accepted,) = zone.accepted_files()
    assert accepted.name.startswith("good@") and not accepted.is_symlink()
    assert accepted.read_bytes() == good_bytes
    assert not any(incoming.iterdir()), "every entry left incoming/"

    # the link targets are neither moved nor changed; the links themselves sit in quarantine
    assert target.read_bytes() == target_bytes
    assert stat.S_ISFIFO(sentinel.path.lstat().st_mode)
    quarantined = {p.name.split("@")[0]: p for p in zone.quarantine_dir.iterdir() if ".report." not in p.name}
    assert quarantined["link"].is_symlink() and os.readlink(quarantined["link"]) == str(target)
    assert quarantined["sentinel"].is_symlink()
    assert stat.S_ISFIFO(quarantined["pipe"].lstat().st_mode)
    assert quarantined["folder"].is_dir()

    def report(stem: str) -> dict:
        path = quarantined[stem]
        return json.loads(path.with_name(path.name + ".report.json").read_text())

    assert "symbolic link" in report("link")["problems"][0]
    assert "named pipe" in report("pipe")["problems"][0]
    assert "directory" in report("folder")["problems"][0]
    assert report("missing_column")["problems"] == ["missing column petal_width"]
    markdown = quarantined["missing_column"].with_name(quarantined["missing_column"].name + ".report.md")
    assert "**missing column petal_width**" in markdown.read_text().splitlines()[2]

    # the 250-byte name is stored under a shortened safe name, with its report beside it
    (long_stored,) = [p for p in quarantined.values() if p.name.startswith("nnnn")]
    assert len((long_stored.name + ".report.json").encode()) <= 255
    assert long_stored.name.split("@")[0].endswith("~")
    long_report = json.loads(long_stored.with_name(long_stored.name + ".report.json").read_text())
    assert long_report["problems"][0] == f"the file name is 250 bytes long; at most {MAX_NAME_BYTES} bytes are allowed"

    # the landing report names every rejected file and where its report is
    summary = next(
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "iris/landing_report"
    )
    rejected_md = summary.materialization.metadata["rejected"].value
    for stem in ("link", "pipe", "folder", "missing_column", "sentinel"):
        assert f"`{stem}.csv`" in rejected_md, stem
    assert ".report.md" in rejected_md


def _ingest(instance: dg.DagsterInstance, zone: ModelLandingZone) -> dg.ExecuteInProcessResult:
    """Materialize raw_batch, evaluation_set, training_dataset and the batch check of ``zone``'s model, nothing else."""
    from ml_platform.defs.evaluation import build_evaluation_defs

    model = ModelContext(get_model(zone.model))
    defs = dg.Definitions.merge(build_ingestion_defs(model), build_evaluation_defs(model))
    wanted = (model.key("raw_batch"), model.key("evaluation_set"), model.key("training_dataset"))
    assets = [a for a in defs.assets or [] if a.key in wanted]
    checks = [c for c in defs.asset_checks or [] if c.check_key.name == "batch_passes_expectation_suite"]
    return dg.materialize(
        [*assets, *checks],
        instance=instance,
        resources={"landing_zone": landing_resource(), "json_io_manager": JsonIOManager()},
        raise_on_error=False,
    )


def test_an_accepted_file_changed_after_acceptance_fails_the_training_dataset(platform_home: Path) -> None:
    zone = landing_zone()
    age(write_good_file(zone.incoming_dir, "good.csv"))
    with dg.instance_for_test() as instance:
        first = _ingest(instance, zone)
        assert first.success, failure_messages(first)
        (accepted,) = zone.accepted_files()
        # someone appends unvalidated rows to the accepted file
        with accepted.open("a") as handle:
            handle.write("99.0,3.0,1.0,0.1,7\n")
        second = _ingest(instance, zone)
        assert not second.success
        message = failure_messages(second)
        assert f"{accepted.name} changed after it was accepted" in message
        assert "iris__training_dataset" in second.get_failed_step_keys()

        # a link planted in accepted/ is refused too, never read through
        accepted.unlink()
        elsewhere = platform_home.parent / "elsewhere.csv"
        elsewhere.write_text(HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n")
        accepted.symlink_to(elsewhere)
        third = _ingest(instance, zone)
        assert not third.success
        assert "symbolic link" in failure_messages(third)


def test_a_single_class_batch_is_quarantined_on_wine_and_nothing_trains(platform_home: Path) -> None:
    import pandas as pd

    spec = spec_of("wine")  # wine sets no min_macro_f1: only the batch gate can stop it
    zone = landing_zone("wine")
    frame = pd.read_csv(spec.bootstrap_path())
    path = zone.incoming_dir / "one_cultivar.csv"
    frame[frame["target"] == 0].to_csv(path, index=False)
    age(path)
    with dg.instance_for_test() as instance:
        result = run_training(instance, model="wine")
    assert not result.success
    assert check_outcomes(result) == {"batch_passes_expectation_suite": False}
    assert materialized(result, "wine") == {"raw_batch"}
    assert model_versions("wine-gradient-boosting") == []
    (stored,) = [p for p in zone.quarantine_dir.iterdir() if p.suffix == ".csv"]
    report = json.loads(stored.with_name(stored.name + ".report.json").read_text())
    assert report["problems"] == ["only one class (class_0); at least 2 required"]

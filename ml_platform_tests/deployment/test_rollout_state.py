"""The rollout-state record and its local file store (interface 5 of the round-3 plan)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_platform.deployment.rollout_state import (
    PROGRESSING,
    FileRolloutStateStore,
    RolloutRecord,
    RolloutStateError,
    store_for,
)


def test_a_record_round_trips_through_the_file_store(tmp_path: Path) -> None:
    store = FileRolloutStateStore(tmp_path)
    assert store.load("iris") is None
    record = RolloutRecord(model="iris", version="7", champion="6", phase=PROGRESSING, step=2, weight=25)
    record.weights = [10, 25, 50]
    record.analyses.append({"step": 2, "verdict": "pass"})
    record.claim("run-1", "test")
    store.save(record)
    path = tmp_path / "iris" / "rollout.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = store.load("iris")
    assert again == record
    assert json.loads(path.read_text())["phase"] == PROGRESSING
    store.clear("iris")
    store.clear("iris")  # idempotent
    assert store.load("iris") is None


def test_bad_records_and_names_are_refused(tmp_path: Path) -> None:
    store = FileRolloutStateStore(tmp_path)
    with pytest.raises(RolloutStateError):
        store.path("../etc")
    with pytest.raises(RolloutStateError):
        RolloutRecord(model="iris", version="1", phase="exploded")
    (tmp_path / "iris").mkdir()
    (tmp_path / "iris" / "rollout.json").write_text("{not json")
    with pytest.raises(RolloutStateError, match="not JSON"):
        store.load("iris")
    (tmp_path / "iris" / "rollout.json").write_text(json.dumps({"model": "iris", "version": "1", "schema": 99}))
    with pytest.raises(RolloutStateError, match="newer"):
        store.load("iris")


def test_a_record_whose_owner_process_died_is_orphaned(tmp_path: Path) -> None:
    record = RolloutRecord(model="iris", version="3")
    record.claim("run-1", "me")
    assert record.owner_alive() is True
    assert not record.orphaned(60)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json,os,sys; from ml_platform.deployment.state import LockHolder; "
            "print(LockHolder.me('child').dump())",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    record.owner = json.loads(child.stdout)  # the child has exited
    assert record.owner_alive() is False
    assert record.orphaned(3600)
    record.owner = {**record.owner, "host": "elsewhere"}  # another host: judged by the heartbeat
    assert record.owner_alive() is None
    assert not record.orphaned(3600)
    assert record.orphaned(3600, now=record.updated + 3601)


def test_the_local_backend_store_lives_in_the_deployments_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_platform.deployment.deployer import local_backend

    monkeypatch.setenv("ML_PLATFORM_HOME", str(tmp_path))
    store = store_for(local_backend("iris"))
    store.save(RolloutRecord(model="iris", version="2"))
    assert (tmp_path / "deployments" / "iris" / "rollout.json").exists()

"""Which rejected versions stop an identical retrain (real sqlite MLflow registry, no training)."""

from __future__ import annotations

from pathlib import Path

from ml_platform.ml.mlflow_store import MlflowStore
from ml_platform.ml.registry import rejected_twin

NAME = "twin-model"


def _version(client, tmp: Path, **tags: str) -> str:
    source = tmp / f"files-{len(list(tmp.iterdir()))}"
    source.mkdir()
    base = {"data_version": "d1", "code_version": "c1"}
    return str(client.create_model_version(NAME, source.as_uri(), tags={**base, **tags}).version)


def test_only_rejections_that_would_repeat_stop_a_retrain(platform_home: Path, tmp_path: Path) -> None:
    client = MlflowStore().client()
    client.create_registered_model(NAME)
    files = tmp_path / "files"
    files.mkdir()

    assert rejected_twin(client, NAME, "d1", "c1") is None  # nothing registered yet
    _version(client, files, validation_status="passed")
    assert rejected_twin(client, NAME, "d1", "c1") is None  # a passed version is no reason to skip

    _version(client, files, rejected_by="serving_smoke_test", validation_status="failed")
    assert rejected_twin(client, NAME, "d1", "c1") is None  # the environment may have failed, not the model

    judged = _version(client, files, rejected_by="no_regression", judged_against_champion="1")
    assert rejected_twin(client, NAME, "d1", "c1", champion="2") is None  # another champion now
    found = rejected_twin(client, NAME, "d1", "c1", champion="1")
    assert found is not None and str(found[0].version) == judged and "no_regression" in found[1]

    canary = _version(client, files, deployment_status="rejected", rejected_reason="live accuracy 0.19")
    found = rejected_twin(client, NAME, "d1", "c1", champion="2")
    assert found is not None and str(found[0].version) == canary
    assert found[1] == "canary rejected it: live accuracy 0.19"

    assert rejected_twin(client, NAME, "d2", "c1", champion="1") is None  # other data
    assert rejected_twin(client, NAME, "d1", "c2", champion="1") is None  # other code

"""The local deployer's feedback signing key: one 0600 file per deployment, handed to every serving process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ml_platform.deployment.feedback_key import (
    KEY_FILE_NAME,
    FeedbackKeyError,
    ensure_feedback_key,
    feedback_key_env,
)
from serving.config import load_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_one_private_key_per_deployment_reused_by_every_process(tmp_path: Path):
    folder = tmp_path / "deployments" / "iris"  # settings.platform_paths().deployment_dir("iris")

    first = feedback_key_env(folder, {})
    second = feedback_key_env(folder, {})  # e.g. the canary started later
    other = feedback_key_env(tmp_path / "deployments" / "wine", {})

    path = Path(first["FEEDBACK_SIGNING_KEY_FILE"])
    assert first == second and path == folder / KEY_FILE_NAME
    assert mode(path) == 0o600
    key = path.read_text().strip()
    assert len(key) == 64 and int(key, 16) >= 0
    assert Path(other["FEEDBACK_SIGNING_KEY_FILE"]).read_text() != path.read_text()
    # what a serving process makes of it
    config = load_config([], {"MODEL_URI": "models:/m/1", "MODEL_NAME": "iris", **first})
    assert (config.feedback_signing_key, config.feedback_key_source) == (key.encode(), "FEEDBACK_SIGNING_KEY_FILE")
    assert [p.name for p in folder.iterdir()] == [KEY_FILE_NAME]  # no temp file left behind


def test_an_operator_configured_key_is_kept(tmp_path: Path):
    assert feedback_key_env(tmp_path, {"FEEDBACK_SIGNING_KEY": "x" * 64}) == {}
    assert feedback_key_env(tmp_path, {"FEEDBACK_SIGNING_KEY_FILE": "/run/secrets/key"}) == {}
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_a_loose_or_truncated_key_file_is_repaired(tmp_path: Path):
    path = ensure_feedback_key(tmp_path)
    key = path.read_text()
    os.chmod(path, 0o644)
    assert ensure_feedback_key(tmp_path).read_text() == key and mode(path) == 0o600

    path.write_text("")  # an interrupted write
    assert len(ensure_feedback_key(tmp_path).read_text().strip()) == 64
    assert path.read_text() != key


def test_a_symlinked_key_file_is_refused(tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.write_text("k" * 64)
    folder = tmp_path / "deployment"
    folder.mkdir()
    (folder / KEY_FILE_NAME).symlink_to(target)

    with pytest.raises(FeedbackKeyError, match="not a regular file"):
        ensure_feedback_key(folder)

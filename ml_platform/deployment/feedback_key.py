"""One feedback signing key per local deployment, shared by all its serving processes.

Serving signs a receipt into every ``/predict`` answer and accepts feedback
only with it (see ``serving/feedback.py``). All processes of one deployment
(stable and canary, and each process's workers) must sign with the same key,
so the local deployer keeps one in ``<home>/deployments/<model>/feedback-signing.key``
(mode 0600, 32 random bytes as hex, created on first use) and hands every
serving process it starts ``FEEDBACK_SIGNING_KEY_FILE`` pointing at it. The
key never appears in a command line or in the process environment.

An operator who configured ``FEEDBACK_SIGNING_KEY`` or ``FEEDBACK_SIGNING_KEY_FILE``
in the deployer's own environment keeps that key (it is inherited unchanged).
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

KEY_FILE_NAME = "feedback-signing.key"
KEY_BYTES = 32
ENV_VALUE = "FEEDBACK_SIGNING_KEY"
ENV_FILE = "FEEDBACK_SIGNING_KEY_FILE"


class FeedbackKeyError(RuntimeError):
    """The deployment's key file exists but cannot be used safely."""


def _usable(path: Path) -> bool:
    """True for a regular file (not a symlink) with a full key; fixes its mode to 0600."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise FeedbackKeyError(f"{path} is not a regular file; remove it to have a new key generated")
    if stat.S_IMODE(info.st_mode) != 0o600:
        os.chmod(path, 0o600)
    return len(path.read_bytes().strip()) >= KEY_BYTES


def ensure_feedback_key(folder: Path) -> Path:
    """The deployment's key file in ``folder``, created (0600, random) when missing or truncated."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / KEY_FILE_NAME
    if path.exists() or path.is_symlink():
        if _usable(path):
            return path
        path.unlink()  # an empty or partial key (interrupted write): replace it
    fd, tmp = tempfile.mkstemp(prefix=".feedback-key-", dir=folder)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(KEY_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with suppress(FileExistsError):  # another deployer won the race: use its key
            os.link(tmp, path)  # atomic, and never replaces an existing key
    finally:
        os.unlink(tmp)
    return path


def feedback_key_env(folder: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a serving process of the deployment in ``folder``: its key file, unless one is configured."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VALUE) or env.get(ENV_FILE):
        return {}
    return {ENV_FILE: str(ensure_feedback_key(folder))}

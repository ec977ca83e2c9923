"""The deployment lock against real holder processes: refusal naming the holder, stale and forced breaks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_platform.deployment.processes import pid_alive
from ml_platform.deployment.state import DeploymentBusy, StateStore
from ml_platform_tests.conftest import REPO_ROOT

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from ml_platform.deployment.state import StateStore
    with StateStore(Path(sys.argv[1])).lock(holder="canary rollout of m v7 (Dagster run test-run)"):
        if sys.argv[2] == "stale":
            if os.fork() == 0:  # the child inherits the locked descriptor and outlives its parent
                time.sleep(60)
                os._exit(0)
            print("locked", flush=True)
            os._exit(0)  # the recorded holder dies without releasing anything
        print("locked", flush=True)
        time.sleep(60)
    """
)


@contextlib.contextmanager
def holder_process(folder: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_a_held_lock_refuses_naming_its_holder_and_force_breaks_it(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "m")
    with holder_process(store.folder, "live") as holder:
        with pytest.raises(DeploymentBusy) as refused, store.lock(0.5, holder="stop"):
            pytest.fail("the lock was taken while another process held it")
        message = str(refused.value)
        assert "canary rollout of m v7 (Dagster run test-run)" in message
        assert f"pid {holder.pid}" in message and "since " in message and "s ago" in message
        assert refused.value.holder is not None and refused.value.holder.alive() is True
        seen = store.holder()
        assert seen is not None and seen.pid == holder.pid

        notes: list[str] = []
        with store.lock(0, holder="stop --force", force=True, log=notes.append):
            assert any("breaking the deployment lock held by canary rollout" in n for n in notes), notes
            assert holder.poll() is None  # the holder keeps running: breaking the lock does not kill it
            current = store.holder()
            assert current is not None and current.pid == os.getpid() and current.operation == "stop --force"
    assert store.holder() is None


def test_a_lock_whose_holder_died_is_stale_and_is_broken_with_a_notice(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "m")
    with holder_process(store.folder, "stale") as holder:
        holder.wait(10)
        assert not pid_alive(holder.pid)
        stale = store.holder()  # the forked child still holds the flock
        assert stale is not None and stale.pid == holder.pid and stale.alive() is False
        notes: list[str] = []
        with store.lock(0, holder="rollback", log=notes.append):
            assert any("stale" in n and f"pid {holder.pid}" in n for n in notes), notes


def test_the_lock_is_taken_once_the_holder_releases_it(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "m")
    with holder_process(store.folder, "live") as holder:
        os.killpg(holder.pid, signal.SIGTERM)  # flock is released with the process
        with store.lock(10, holder="rollback"):
            assert store.holder() is not None

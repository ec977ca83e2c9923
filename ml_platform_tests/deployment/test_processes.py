"""Process-group handling of the local deployer: what it may signal, and that nothing survives a stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from ml_platform.deployment.processes import group_members, owns_group, pid_alive, pid_runs, stop_group

# A leader that starts a child in its own process group, then waits.
SCRIPT = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
)


def wait_for(condition, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_group_whose_leader_was_killed_is_still_ours_and_is_stopped_whole() -> None:
    leader = subprocess.Popen([sys.executable, "-c", SCRIPT], start_new_session=True)
    try:
        assert wait_for(lambda: len(group_members(leader.pid)) == 2)
        assert pid_runs(leader.pid, "subprocess") and not pid_runs(leader.pid, "nginx")
        os.kill(leader.pid, signal.SIGKILL)  # the leader dies, its child lives on
        assert wait_for(lambda: not pid_alive(leader.pid))
        orphans = group_members(leader.pid)
        assert len(orphans) == 1
        assert owns_group(leader.pid, "serving")  # members of a live group are ours whatever the leader ran
        stop_group(leader.pid, timeout=5)
        assert wait_for(lambda: group_members(leader.pid) == [])
        assert not owns_group(leader.pid, "serving")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)

"""Serving processes on 127.0.0.1: start detached under a supervisor, probe, stop gracefully.

Each track runs as ``python -m ml_platform.deployment.supervisor ... -- python
-m serving``, started in its own session (process group), so it outlives the
Dagster run that started it; the supervisor restarts the serving process when
it dies (see :mod:`.supervisor`). The group holds the supervisor, the serving
main process, its API server and its inference workers: stopping asks the
supervisor first (SIGTERM), then stops whatever is left of the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SUPERVISOR_MODULE = "ml_platform.deployment.supervisor"


class ProcessStartError(RuntimeError):
    """A serving process exited or never became ready."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child is reaped and counts as gone)."""
    if pid <= 0:
        return False
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child: another process started it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def pid_runs(pid: int, needle: str) -> bool:
    """``pid`` is alive and its command line contains ``needle`` (guards against a reused pid)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True  # no /proc to check: trust the pid
    return needle in cmdline


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (read from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def owns_group(pid: int, needle: str) -> bool:
    """The group ``pid`` led is still ours: its leader runs ``needle``, or (leader dead) members remain.

    A pid is not reused while it names a live process group, so members left
    after the leader died (e.g. inference workers of a killed server) are ours.
    """
    if pid_runs(pid, needle):
        return True
    return not pid_alive(pid) and bool(group_members(pid))


def serving_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a serving process: ours, the project importable, then ``extra``."""
    env = dict(os.environ)
    if (PROJECT_ROOT / "serving" / "__main__.py").exists():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_serving(
    *,
    model_uri: str,
    port: int,
    track: str,
    log_path: Path,
    env: Mapping[str, str],
    status_path: Path,
    supervisor_args: Sequence[str] = (),
    python: str = sys.executable,
) -> int:
    """Start ``python -m serving`` detached under its supervisor; return the supervisor's pid (= process group id)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    status_path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"MODEL_URI": model_uri, "PORT": str(port), "TRACK": track, "HOST": "127.0.0.1", **env}
    supervisor = [python, "-m", SUPERVISOR_MODULE, "--status", str(status_path), "--port", str(port)]
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            [*supervisor, *supervisor_args, "--", python, "-m", "serving"],
            cwd=str(PROJECT_ROOT),
            env=serving_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


def health(port: int, timeout: float = 3.0) -> tuple[int, dict[str, Any]]:
    """``GET /health`` of a serving process: (status code, body); (0, {}) when unreachable."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=timeout)
    except httpx.HTTPError:
        return 0, {}
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {}


def served_version(body: dict[str, Any]) -> str | None:
    """The version every worker serves (None during a swap or when unknown)."""
    model = body.get("model") or {}
    versions = model.get("serving_versions") or []
    if len(versions) == 1 and not model.get("swap_in_progress"):
        return str(versions[0])
    return None


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no output>"


def wait_ready(pid: int, port: int, timeout: float, log_path: Path, track: str) -> dict[str, Any]:
    """Wait until ``/health`` answers 200 for ``track``; raise with the log tail if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise ProcessStartError(f"{track} serving process {pid} exited:\n{tail(log_path)}")
        status, body = health(port)
        if status == 200 and body.get("track") == track:
            return body
        time.sleep(0.3)
    raise ProcessStartError(f"{track} serving process {pid} not ready after {timeout:.0f}s:\n{tail(log_path)}")


def stop_group(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM the process group (resumed first, in case it was stopped), SIGKILL what remains."""

    def signal_group(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)

    if pid <= 0:
        return
    signal_group(signal.SIGCONT)
    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    signal_group(signal.SIGKILL)  # workers or a hung main process
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)


def stop_supervised(pid: int, timeout: float = 30.0) -> None:
    """Ask the supervisor ``pid`` to stop its track (SIGTERM), then stop whatever is left of its group."""
    if pid_runs(pid, SUPERVISOR_MODULE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
    if pid_alive(pid) or group_members(pid):  # what the supervisor left (or all of it, if it was killed)
        stop_group(pid, timeout=5.0)

"""``python -m ml_platform.deployment.supervisor``: keep one serving process running, restart it when it dies.

The local deployer starts one supervisor per track (stable, canary), detached
in its own session, so it outlives the Dagster run that started the
deployment. The supervisor leads the process group; the serving process it
starts (and that process's API server and inference workers) stay in that
group, so stopping the group stops everything, and a SIGKILL of the group is
still a crash of the whole track.

Restart policy (Kubernetes' CrashLoopBackOff, in small):

- the child exited (any code, any signal), or it answered ``GET /health`` once
  and then stopped answering for ``--liveness-failures`` probes in a row (an
  HTTP answer of any status counts as alive: it is a liveness probe, not a
  readiness probe), or it never answered within ``--startup-timeout`` after a
  restart: what is left of its process tree is killed (an orphaned API server
  would keep the port) and it starts again on the same port, with the same
  environment, after ``backoff`` seconds: ``--backoff-base`` doubled for every
  restart in a row, at most ``--backoff-cap``; the sequence resets once the
  child has stayed up for ``--reset-after`` seconds;
- a child that never became ready on its *first* start is not restarted: the
  supervisor exits with its exit code, so the deployer reports a start
  failure at once instead of waiting for a crash loop;
- SIGTERM to the supervisor (how the deployer stops a track) stops
  restarting, forwards SIGTERM to the child (serving shuts its API server and
  workers down in order), kills what remains of the group after
  ``--stop-grace`` seconds and exits 0.

Every change is written atomically to the ``--status`` JSON file: state
(``starting``, ``running``, ``backing_off``, ``stopped``, ``failed``),
child pid, restart count, last exit code, time and reason, next start time.
``python -m ml_platform.cli status`` shows it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ml_platform.deployment.processes import group_members


@dataclass
class SupervisorStatus:
    """What the supervisor last did, as written to its status file."""

    supervisor_pid: int
    state: str = "starting"
    child_pid: int | None = None
    child_started_at: float | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    last_exit_reason: str = ""
    next_start_at: float | None = None
    backoff_seconds: float = 0.0

    @classmethod
    def read(cls, path: Path) -> SupervisorStatus | None:
        try:
            raw = json.loads(path.read_text())
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (OSError, ValueError, TypeError):
            return None

    def write(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    def describe_last_exit(self) -> str:
        if self.last_exit_at is None:
            return "-"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.last_exit_at))
        return f"{self.last_exit_reason} (exit code {self.last_exit_code}) at {when}"


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def alive_on(port: int, timeout: float) -> bool:
    """Liveness: anything answers HTTP on ``GET /health`` (any status)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/health")
        connection.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


class Supervisor:
    """Runs ``command`` and restarts it by the policy in the module docstring."""

    def __init__(
        self, command: Sequence[str], status_path: Path, port: int | None, options: argparse.Namespace
    ) -> None:
        self.command = list(command)
        self.status_path = status_path
        self.port = port
        self.options = options
        self.status = SupervisorStatus(os.getpid())
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def _save(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        with contextlib.suppress(OSError):
            self.status.write(self.status_path)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping.set()

    def _kill_others(self, grace: float) -> None:
        """SIGTERM, then SIGKILL, every other process of our group (what is left of the child's tree)."""
        me = os.getpid()
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            others = [pid for pid in group_members(me) if pid != me]
            for pid in others:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signum)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.child is not None:
                    self.child.poll()  # reap our direct child
                if not [pid for pid in group_members(me) if pid != me]:
                    return
                time.sleep(0.05)

    def _watch(self, child: subprocess.Popen[bytes], first: bool) -> tuple[int | None, str, bool]:
        """Until the child dies, turns unresponsive or we are asked to stop: (exit code, reason, was ready)."""
        opts = self.options
        started, ready, misses = time.monotonic(), False, 0
        while True:
            code = child.poll()
            if code is not None:
                return code, exit_reason(code), ready
            if self.stopping.is_set():
                return None, "stopping", ready
            if self.port is not None:
                if alive_on(self.port, opts.probe_timeout):
                    misses = 0
                    if not ready:
                        ready = True
                        self._save(state="running")
                elif ready:
                    misses += 1
                    if misses >= opts.liveness_failures:
                        return None, f"no answer on /health {misses} times in a row", ready
                elif not first and time.monotonic() - started > opts.startup_timeout:
                    return None, f"not ready {opts.startup_timeout:.0f}s after a restart", ready
            else:
                ready = True
            if ready and self.status.backoff_seconds and time.monotonic() - started >= opts.reset_after:
                self._save(backoff_seconds=0.0)  # stayed up: the next crash restarts after the base delay
            self.stopping.wait(opts.probe_interval)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        opts = self.options
        first = True
        while not self.stopping.is_set():
            self.child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
            self._save(state="starting", child_pid=self.child.pid, child_started_at=time.time(), next_start_at=None)
            code, reason, ready = self._watch(self.child, first)
            if code is None and reason == "stopping":
                break
            if code is None:  # unresponsive: take the whole tree down before restarting
                self._kill_others(opts.stop_grace)
                code = self.child.wait()
            self._kill_others(2.0)  # an orphaned API server or worker would keep the port
            print(f"supervisor: serving process {self.child.pid} {reason}", file=sys.stderr, flush=True)
            if first and not ready:
                self._save(state="failed", last_exit_code=code, last_exit_at=time.time(), last_exit_reason=reason)
                return code if code > 0 else 1
            first = False
            backoff = min(opts.backoff_cap, max(opts.backoff_base, self.status.backoff_seconds * 2))
            self._save(
                state="backing_off",
                child_pid=None,
                restarts=self.status.restarts + 1,
                last_exit_code=code,
                last_exit_at=time.time(),
                last_exit_reason=reason,
                backoff_seconds=backoff,
                next_start_at=time.time() + backoff,
            )
            print(f"supervisor: restart {self.status.restarts} in {backoff:.1f}s", file=sys.stderr, flush=True)
            self.stopping.wait(backoff)
        self._stop_child()
        self._save(state="stopped", child_pid=None, next_start_at=None)
        return 0

    def _stop_child(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()  # serving shuts its API server and workers down in order
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(self.options.stop_grace)
        self._kill_others(2.0)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m ml_platform.deployment.supervisor [options] -- command ...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m ml_platform.deployment.supervisor", description=__doc__)
    parser.add_argument("--status", required=True, type=Path, help="status JSON file")
    parser.add_argument("--port", type=int, default=None, help="probe GET /health on 127.0.0.1:<port>")
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--probe-timeout", type=float, default=2.0)
    parser.add_argument("--liveness-failures", type=int, default=3)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--backoff-base", type=float, default=0.5)
    parser.add_argument("--backoff-cap", type=float, default=30.0)
    parser.add_argument("--reset-after", type=float, default=60.0)
    parser.add_argument("--stop-grace", type=float, default=20.0)
    options = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        raise SystemExit("no command to supervise after --")
    return options, command


def main(argv: Sequence[str] | None = None) -> int:
    options, command = parse_args(sys.argv[1:] if argv is None else argv)
    return Supervisor(command, options.status, options.port, options).run()


if __name__ == "__main__":
    sys.exit(main())

"""Process supervision for ``python -m serving``: one process tree that lives and dies as a whole.

The main process starts the API server (forked) and the inference workers
(spawned) and then only supervises them:

- if any of them exits while the server is running, the main process drains
  the others and exits non-zero (a supervisor, Kubernetes or the local
  deployer, restarts the whole server: no half-alive server keeps the port);
- on SIGTERM/SIGINT it drains: the API server stops accepting and finishes
  its in-flight requests (at most ``DRAIN_TIMEOUT`` seconds), then each worker
  gets a stop message, flushes its prediction log and exits; the main process
  exits 0;
- children ask the kernel to signal them when the main process disappears
  (``PR_SET_PDEATHSIG``, Linux), so even a SIGKILLed main process leaves no
  orphan holding the port.

Signal handlers here only set a flag (:class:`StopFlag`): nothing that takes a
lock runs inside a handler.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from contextlib import suppress

log = logging.getLogger("serving.supervision")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StopFlag:
    """An ``Event``-like flag that is safe to set from a signal handler (no lock involved).

    Stands in for LitServe's shutdown event in the main process: ``wait``
    polls, so a handler setting it never contends with the waiting thread.
    """

    POLL_SECONDS = 0.1

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(self.POLL_SECONDS)
        return self._set


def die_with_parent(signum: int, parent_pid: int) -> bool:
    """Have the kernel send ``signum`` to this process when ``parent_pid`` (its parent) exits.

    Linux only (elsewhere a no-op returning False). If the parent is already
    gone, the signal is sent at once.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)
    return True


def exit_description(exitcode: int | None) -> str:
    """``"exit code 3"`` or ``"signal SIGKILL"`` for a ``multiprocessing`` exit code."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        with suppress(ValueError):
            return f"signal {signal.Signals(-exitcode).name}"
        return f"signal {-exitcode}"
    return f"exit code {exitcode}"

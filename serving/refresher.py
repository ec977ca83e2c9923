"""Keeps the served version in step with the registry (runs in the API process).

Every ``MODEL_AUTO_REFRESH_SECONDS`` (and on ``POST /admin/reload``) the model
URI is resolved again. A new version is downloaded and checked against the
served request schema *before* the desired-model marker is rewritten, so
workers only ever swap to a complete, compatible version. When MLflow cannot
be reached the served model stays, ``/health`` reports ``degraded``, and
retries back off exponentially (from ``min(1 s, interval)`` up to
``max(interval, 30 s)``) until the registry answers again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ml_platform.ml.safe_load import ModelRefused
from serving.registry import (
    ModelBundle,
    ModelRef,
    ModelResolutionError,
    RegistryClient,
    load_bundle_spec,
    redact_uri,
    write_json_atomic,
)
from serving.schema import RequestSchema
from serving.state import MarkerWatcher, RuntimeLayout, publish_desired_model

log = logging.getLogger(__name__)

BACKOFF_CAP_FLOOR = 30.0


class IncompatibleModel(ModelResolutionError):
    """A newer version whose request schema differs from the served one (the message is safe to show)."""


def public_reason(exc: BaseException, ref: ModelRef, reachable: bool) -> str:
    """What ``/health`` tells anyone about a failed refresh: the platform's own refusal reasons verbatim,
    otherwise a category (raw errors can hold SQL text, hostnames or paths; they go to the log, and to
    ``/health`` only for a caller with the admin token)."""
    if isinstance(exc, IncompatibleModel) or isinstance(exc.__cause__, ModelRefused):
        return str(exc)
    if not reachable:
        return f"cannot reach the MLflow registry to resolve {ref.uri} (details in the server log)"
    if isinstance(exc, ModelResolutionError):
        return f"cannot resolve {ref.uri} to a servable version (details in the server log)"
    return f"the refresh of {ref.uri} failed ({type(exc).__name__}; details in the server log)"


@dataclass(frozen=True)
class RefreshOutcome:
    """What one refresh did."""

    previous_version: str
    version: str
    error: str | None

    @property
    def changed(self) -> bool:
        return self.version != self.previous_version


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class ModelRefresher:
    """Re-resolves the model URI, publishes new versions to workers, and tracks registry health."""

    def __init__(
        self,
        ref: ModelRef,
        registry: RegistryClient,
        layout: RuntimeLayout,
        schema: RequestSchema,
        bundle: ModelBundle,
        interval: float,
    ) -> None:
        self.ref = ref
        self.registry = registry
        self.layout = layout
        self.schema = schema
        self.interval = interval
        self.current = bundle
        self.resolved_at: float = time.time()
        self.reachable: bool = True
        self.server_version: str | None = None
        self.last_refresh_at: float | None = None
        self.last_refresh_error: str | None = None  # raw: the log and admin callers only
        self.last_refresh_public: str | None = None  # safe for anyone (see public_reason)
        self.failures = 0
        self.on_reachability: Callable[[bool], None] | None = None  # set by the serving context
        self._lock = threading.Lock()
        self._watcher = MarkerWatcher(layout, interval=0.0)
        self._status_seen: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- refreshing -------------------------------------------------------------------------

    def refresh_now(self) -> RefreshOutcome:
        """Resolve once; publish a new version if there is one (blocking; thread-safe)."""
        with self._lock:
            previous = self.current.version
            self.last_refresh_at = time.time()
            try:
                bundle = self.registry.fetch(self.ref)
                if bundle.version != previous:
                    reason = self.schema.incompatibility(load_bundle_spec(bundle))
                    if reason:
                        raise IncompatibleModel(f"{bundle.uri} is not served: {reason}")
                    publish_desired_model(self.layout, bundle)
                    self.current, self.resolved_at = bundle, time.time()
                    log.info("model %s now resolves to version %s (was %s)", self.ref.uri, bundle.version, previous)
                self.server_version = self.probe_server_version()
                self._set_reachable(True)
                self.last_refresh_error, self.last_refresh_public, self.failures = None, None, 0
                self._share_status()
                return RefreshOutcome(previous, self.current.version, None)
            except Exception as exc:
                self.failures += 1
                reachable = self.registry.ping()
                # the public reason first: /health reads these without the lock
                self.last_refresh_public = public_reason(exc, self.ref, reachable)[:500]
                self.last_refresh_error = str(exc)[:500]
                self._set_reachable(reachable)
                log.warning("model refresh failed (%d in a row): %s", self.failures, self.last_refresh_error)
                self._share_status()
                return RefreshOutcome(previous, previous, self.last_refresh_error)

    def probe_server_version(self) -> str | None:
        """The tracking server's version (None for local stores, or when it does not answer)."""
        try:
            return self.registry.server_version()
        except Exception:
            return None

    def _set_reachable(self, reachable: bool) -> None:
        self.reachable = reachable
        if self.on_reachability is not None:
            self.on_reachability(reachable)

    def next_delay(self) -> float:
        """Seconds until the next attempt: the interval, or an exponential backoff after failures."""
        if not self.failures:
            return self.interval
        base = min(1.0, self.interval)
        return min(base * 2 ** (self.failures - 1), max(self.interval, BACKOFF_CAP_FLOOR))

    def follow_published(self) -> bool:
        """Adopt a version another API server process published (its refresh or ``/admin/reload``).

        Every API server process runs a refresher; the one that sees a new version first publishes
        the desired-model marker, and the others take it from there instead of waiting for their own
        next look at the registry, so ``/health`` answers the same whichever process gets the
        request. Non-blocking (skipped while this process's own refresh holds the lock); True when
        the current version changed.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._adopt_shared_status()
            published = self._watcher.poll()
            if published is None or published.version == self.current.version:
                return False
            log.info(
                "following version %s published by another API server (was %s)", published.version, self.current.version
            )
            self.current, self.resolved_at = published, time.time()
            return True
        finally:
            self._lock.release()

    def _share_status(self) -> None:
        """Write the outcome of this refresh for the other API server processes (their ``/health``)."""
        status = {
            "pid": os.getpid(),
            "last_refresh_at": self.last_refresh_at,
            "last_refresh_error": self.last_refresh_error,
            "last_refresh_public": self.last_refresh_public,
            "reachable": self.reachable,
            "failures": self.failures,
            "server_version": self.server_version,
        }
        try:
            write_json_atomic(self.layout.refresh_status, status)
        except OSError:  # the runtime folder is gone (shutting down): nothing to share
            log.debug("cannot write the refresh status", exc_info=True)

    def _adopt_shared_status(self) -> None:
        """Take the registry status of a more recent refresh by another API server process."""
        try:
            st = os.stat(self.layout.refresh_status)
            key = (st.st_ino, st.st_mtime_ns)
            if key == self._status_seen:
                return
            self._status_seen = key
            status = json.loads(self.layout.refresh_status.read_text())
        except (OSError, ValueError):
            return
        at = status.get("last_refresh_at")
        if status.get("pid") == os.getpid() or at is None or (self.last_refresh_at or 0.0) >= at:
            return
        self.last_refresh_at = at
        self.last_refresh_public = status.get("last_refresh_public")
        self.last_refresh_error = status.get("last_refresh_error")
        self.failures = int(status.get("failures") or 0)
        self.server_version = status.get("server_version")
        if bool(status.get("reachable")) != self.reachable:
            self._set_reachable(bool(status.get("reachable")))

    # -- background thread ------------------------------------------------------------------

    def start(self) -> None:
        """Refresh in a daemon thread (not when the interval is 0)."""
        if self.interval <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="model-refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.next_delay()):
            self.refresh_now()

    # -- reporting --------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self.reachable and self.last_refresh_error is None

    def snapshot(self, detailed: bool = False) -> dict[str, Any]:
        """The ``mlflow`` block of ``/health`` (raw refresh errors only when ``detailed``)."""
        return {
            "tracking_uri": redact_uri(self.registry.tracking_uri) if detailed else None,  # paths, hostnames
            "reachable": self.reachable,
            "server_version": self.server_version,
            "model_uri": self.ref.uri,
            "resolved_version": self.current.version,
            "loaded_at": _iso(self.resolved_at),
            "last_refresh_at": _iso(self.last_refresh_at),
            "last_refresh_error": self.last_refresh_error if detailed else self.last_refresh_public,
            "consecutive_failures": self.failures,
            "auto_refresh_seconds": self.interval,
        }

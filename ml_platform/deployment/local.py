"""The ``local`` deployer backend: one model's serving processes on 127.0.0.1 behind the shared nginx.

A backend is addressed by the platform model name (the catalog instance, e.g.
``iris``); it serves that model's registered MLflow model. Layout under
``<home>/deployments/<model>/`` (``settings.platform_paths().deployment_dir``):
``state.json`` (what runs where, and the routing this model wants), ``lock``
(this model's deployment lock), ``feedback-signing.key``, ``router/access.log``
(the router's log of this model's requests), ``logs/<track>-<port>.log``
(serving output), ``run/<track>-<port>/`` (each process's Prometheus
multiprocess folder and its supervisor's ``supervisor.json``).
``<home>/deployments/_router/`` holds the one nginx of all models (config, pid,
error log, router lock: :mod:`.router`), on the public port, routing
``/models/<model>/...`` to each model and the unprefixed paths to the default
model. ``<home>/deployments/_prometheus/serving-<model>.json`` lists a model's
running processes for a Prometheus ``file_sd_configs`` job.

Two models never share a lock, a state file, a serving port or a log; they
share only the router, whose lock is held just for a render and reload.
Serving processes get ``MODEL_NAME=<model>`` and ``PREDICTION_LOG_DIR`` =
``<home>/logs/predictions/<model>``.

Stable serves ``models:/<name>@champion`` with an admin token only the
deployer knows; a promotion moves the alias, then ``POST /admin/reload`` makes
stable hot-swap (no request fails during the swap). The canary serves a pinned
version. A canary is removed in two reloads: first no new traffic, then no
route at all once the old nginx workers have drained and no request reached
it for ``drain_seconds`` (feedback for its last answers), and only then stopped.

Each track runs ``replicas`` serving processes (``ML_PLATFORM_REPLICAS``,
default 1), each on its own port; the router spreads the track's share of
traffic evenly across them, and its passive health checks take a dead replica
out (its failed attempt is retried on another). All processes of a model share
one feedback signing key and one replay ledger
(``deployments/<model>/feedback-ledger.sqlite``), so feedback counts on
whichever replica receives it (:mod:`serving.feedback`).

Each replica runs under a supervisor (:mod:`.supervisor`) that restarts its
serving process, on the same port, when it dies or stops answering. A canary
that had to be restarted is reported unhealthy for the rest of its rollout
(a crash is a failed canary, even if it came back).

Every name that reaches a path or a config (model name, version) is checked
against a strict allowlist; paths in nginx.conf are quoted (:mod:`.nginx`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from ml_platform import settings
from ml_platform.catalog import MODEL_NAME_PATTERN, CatalogError, get_model
from ml_platform.deployment.backend import DeploymentError, DeploymentStatus
from ml_platform.deployment.feedback_key import feedback_key_env
from ml_platform.deployment.nginx import MAX_REPLICAS, NginxError, NginxRouter, Routing
from ml_platform.deployment.processes import (
    ProcessStartError,
    free_port,
    health,
    owns_group,
    pid_alive,
    pid_runs,
    served_version,
    start_serving,
    stop_supervised,
    wait_ready,
)
from ml_platform.deployment.router import SharedRouter, model_access_log, routing_dict
from ml_platform.deployment.router_log import RouterLogReader
from ml_platform.deployment.state import DeploymentState, LockHolder, ProcessRecord, StateStore
from ml_platform.deployment.supervisor import SupervisorStatus

ACCESS_LOG_ROTATE_BYTES = 64 * 1024 * 1024
MAX_DRAIN_SECONDS = 15.0
REGISTERED_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,9}$")
TRACKS = ("stable", "canary")
REPLICAS_ENV = "ML_PLATFORM_REPLICAS"
FEEDBACK_LEDGER_NAME = "feedback-ledger.sqlite"


def replicas_setting(value: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Serving processes per track: ``value``, else ``ML_PLATFORM_REPLICAS``, else 1 (at most ``MAX_REPLICAS``)."""
    raw: object = value
    if raw is None:
        raw = (os.environ if environ is None else environ).get(REPLICAS_ENV, "1")
    try:
        count = int(str(raw).strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_REPLICAS or isinstance(raw, bool):
        raise DeploymentError(f"{REPLICAS_ENV} must be an integer in 1..{MAX_REPLICAS}, got {raw!r}")
    return count


def checked_model_name(name: object) -> str:
    """``name`` if it is a platform model name (``catalog.MODEL_NAME_PATTERN``): safe as folder, route and config."""
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.match(name):
        raise DeploymentError(
            f"model name {name!r} is not deployable locally: use 1-40 lowercase letters, digits or '_', "
            "starting with a letter"
        )
    return name


def checked_registered_name(name: object) -> str:
    """``name`` if it is safe in a model URI: letters, digits, ``.``, ``_``, ``-`` (no ``..``)."""
    if not isinstance(name, str) or not REGISTERED_NAME_PATTERN.match(name) or ".." in name:
        raise DeploymentError(
            f"registered model name {name!r} is not deployable locally: use 1-128 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, no '..')"
        )
    return name


def registered_name_of(model: str) -> str:
    """The MLflow registered model name of a catalog model."""
    try:
        return get_model(model).spec.model.name
    except CatalogError as exc:
        raise DeploymentError(f"cannot deploy {model!r}: {exc}") from exc


def checked_version(version: object) -> str:
    """``version`` if it is an MLflow model version number."""
    text = str(version) if isinstance(version, int) and not isinstance(version, bool) else version
    if not isinstance(text, str) or not VERSION_PATTERN.match(text):
        raise DeploymentError(f"model version {version!r} is not a version number (1, 2, ...)")
    return text


class LocalBackend:
    """One model's stable and canary serving processes behind the shared nginx, driven through its state file.

    ``model`` is the platform model name (route ``/models/<model>/``, folder, ``MODEL_NAME``);
    ``registered_name`` the MLflow model it serves (default: the catalog entry's ``spec.model.name``).
    ``default_model`` overrides which model the unprefixed paths serve (default: the catalog's).
    """

    kind = "local"

    def __init__(
        self,
        model: str,
        *,
        registered_name: str | None = None,
        deployments_dir: Path | None = None,
        default_model: str | None = None,
        public_port: int = 8080,
        nginx_binary: str = "nginx",
        workers: int = 1,
        stable_refresh_seconds: float = 30.0,
        drain_seconds: float = 1.0,
        canary_env: Mapping[str, str] | None = None,
        stable_env: Mapping[str, str] | None = None,
        restart_backoff_seconds: float = 0.5,
        restart_backoff_cap_seconds: float = 30.0,
        liveness_failures: int = 3,
        replicas: int | None = None,
    ) -> None:
        self.model = checked_model_name(model)
        self.model_name = checked_registered_name(
            registered_name if registered_name is not None else registered_name_of(self.model)
        )
        root = deployments_dir or settings.platform_paths().deployments_root
        self.root = root
        self.folder = root / self.model
        self.store = StateStore(self.folder)
        self.access_log = model_access_log(root, self.model)
        self.configured_port = public_port
        self.nginx_binary = shutil.which(nginx_binary) or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else nginx_binary
        )
        self.router = SharedRouter(root, public_port, self.nginx_binary, default_model)
        self.workers = workers
        self.replicas = replicas_setting(replicas)
        self.stable_refresh_seconds = stable_refresh_seconds
        self.drain_seconds = drain_seconds
        self.canary_env = dict(canary_env or {})
        self.stable_env = dict(stable_env or {})
        self.supervisor_args = [
            f"--backoff-base={float(restart_backoff_seconds)}",
            f"--backoff-cap={float(restart_backoff_cap_seconds)}",
            f"--liveness-failures={int(liveness_failures)}",
        ]

    # -- state ------------------------------------------------------------------------------

    def _state(self) -> DeploymentState:
        state = self.store.load()
        port = self.router.public_port  # where the shared nginx runs, else the configured port
        if state is None:
            state = DeploymentState(model_name=self.model_name, public_port=port)
        state.public_port = port
        return state

    def _router(self, state: DeploymentState | None = None) -> NginxRouter:
        return self.router.nginx()

    def _save(self, state: DeploymentState) -> None:
        self.store.save(state)
        self._write_prometheus_targets(state)

    def _write_prometheus_targets(self, state: DeploymentState) -> None:
        folder = self.root / "_prometheus"
        folder.mkdir(parents=True, exist_ok=True)
        targets = [f"127.0.0.1:{r.port}" for track in TRACKS for r in state.replicas(track)]
        labels = {"deployment": self.model, "model": self.model}
        payload = [{"targets": targets, "labels": labels}] if targets else []
        path = folder / f"serving-{self.model}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, path)

    @property
    def public_url(self) -> str:
        """This model's base URL on the shared router (``/models/<model>``)."""
        return f"http://127.0.0.1:{self.router.public_port}/models/{self.model}"

    @contextmanager
    def lock(
        self, timeout: float = 0.0, *, holder: str = "", force: bool = False, log: Callable[[str], None] | None = None
    ) -> Iterator[None]:
        """The deployment lock (see :meth:`StateStore.lock`); ``holder`` says what takes it."""
        with self.store.lock(timeout, holder=holder, force=force, log=log):
            yield

    def lock_holder(self) -> LockHolder | None:
        """Who holds the deployment lock now (None when free)."""
        return self.store.holder()

    # -- processes --------------------------------------------------------------------------

    def canary_upstream_port(self, record: ProcessRecord) -> int:
        """Where the router sends canary traffic (the process itself; tests put a proxy here)."""
        return record.port

    def _run_dir(self, track: str, port: int) -> Path:
        return self.folder / "run" / f"{track}-{port}"

    def supervisor_status(self, record: ProcessRecord | None) -> SupervisorStatus | None:
        """What the track's supervisor last reported (restarts, last exit), if anything."""
        if record is None:
            return None
        return SupervisorStatus.read(self._run_dir(record.track, record.port) / "supervisor.json")

    def _start_replicas(
        self, track: str, model_uri: str, version: str, env: Mapping[str, str], timeout: float, count: int
    ) -> list[ProcessRecord]:
        """``count`` supervised processes of ``track``, started together, each ready on its own port.

        If one fails, the others are stopped too and :class:`DeploymentError` is raised.
        """
        launched: list[ProcessRecord] = []
        try:
            for _ in range(count):
                launched.append(self._launch(track, model_uri, version, env))
            for record in launched:
                self._confirm(record, timeout)
        except BaseException:
            for record in launched:
                self._stop(record)
            raise
        return launched

    def _launch(self, track: str, model_uri: str, version: str, env: Mapping[str, str]) -> ProcessRecord:
        if track not in TRACKS:
            raise DeploymentError(f"unknown track {track!r}")
        version = checked_version(version)
        port = free_port()
        run_dir = self._run_dir(track, port)
        if run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        log_path = self.folder / "logs" / f"{track}-{port}.log"
        settings_env = {
            "ML_PLATFORM_HOME": str(settings.platform_home()),
            "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri(),
            "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "prometheus"),
            "WORKERS": str(self.workers),
            "LOG_LEVEL": "warning",
            "MODEL_NAME": self.model,
            "PREDICTION_LOG_DIR": str(settings.platform_paths().prediction_log_dir(self.model)),
            # one replay ledger for every process of the model: a receipt counts once, whichever replica gets it
            "FEEDBACK_LEDGER": str(self.folder / FEEDBACK_LEDGER_NAME),
            **feedback_key_env(self.folder, {**os.environ, **env}),  # one receipt key for all tracks
            **env,
        }
        pid = start_serving(
            model_uri=model_uri,
            port=port,
            track=track,
            log_path=log_path,
            env=settings_env,
            status_path=run_dir / "supervisor.json",
            supervisor_args=self.supervisor_args,
        )
        record = ProcessRecord(
            track=track,
            model_uri=model_uri,
            version=version,
            pid=pid,
            port=port,
            upstream_port=port,
            log_path=str(log_path),
            started_at=time.time(),
            admin_token=env.get("ADMIN_API_TOKEN", ""),
        )
        return record

    def _confirm(self, record: ProcessRecord, timeout: float) -> None:
        """Wait until ``record`` is ready, serves its version and is supervised (raise otherwise)."""
        try:
            body = wait_ready(record.pid, record.port, timeout, Path(record.log_path), record.track)
        except ProcessStartError as exc:
            raise DeploymentError(str(exc)) from exc
        serving = served_version(body)
        if serving != record.version:
            raise DeploymentError(
                f"{record.track} process resolved {record.model_uri} to version {serving}, expected {record.version}"
            )
        self._wait_supervised(record, timeout)

    def _wait_supervised(self, record: ProcessRecord, timeout: float) -> None:
        """Return once the supervisor has seen the track ready, so a crash from now on is restarted.

        ``/health`` can answer before the supervisor's next probe; a crash in that gap would look to
        the supervisor like a failed first start, which it does not restart.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.supervisor_status(record)
            if status is not None and status.state == "running":
                return
            if not pid_alive(record.pid):
                break
            time.sleep(0.05)
        raise DeploymentError(f"{record.track} supervisor {record.pid} never reported the process running")

    def _stop(self, record: ProcessRecord | None) -> None:
        if record is None:
            return
        if owns_group(record.pid, "serving"):  # never signal a pid that was reused by something else
            stop_supervised(record.pid)
        shutil.rmtree(self._run_dir(record.track, record.port), ignore_errors=True)

    @staticmethod
    def _alive(record: ProcessRecord | None) -> bool:
        return record is not None and pid_runs(record.pid, "serving") and health(record.port)[0] == 200

    def _alive_or_restarting(self, record: ProcessRecord | None, timeout: float) -> bool:
        """Alive now, or its supervisor runs and brings it back within ``timeout``."""
        if record is None or not pid_runs(record.pid, "serving"):
            return False
        deadline = time.monotonic() + timeout
        while True:
            if health(record.port)[0] == 200:
                return True
            status = self.supervisor_status(record)
            if status is None or status.state in ("failed", "stopped") or time.monotonic() >= deadline:
                return False
            if not pid_runs(record.pid, "serving"):
                return False
            time.sleep(0.3)

    # -- routing ----------------------------------------------------------------------------

    def _apply(self, state: DeploymentState, *, include_canary: bool = True, pin_canary: bool = True) -> None:
        if state.stable is None:
            raise DeploymentError("no stable process to route to")
        state.generation += 1
        stable = state.replicas("stable")
        canary = state.replicas("canary") if include_canary else []
        routing = Routing(
            generation=state.generation,
            stable_port=stable[0].upstream_port,
            canary_port=canary[0].upstream_port if canary else None,
            canary_weight=state.canary_weight if canary else 0,
            pin_canary=pin_canary,
            stable_peer_ports=tuple(r.upstream_port for r in stable[1:]),
            canary_peer_ports=tuple(r.upstream_port for r in canary[1:]),
        )
        try:
            with self.router.locked():  # render from every model's state + this routing, reload, save
                nginx = self.router.apply({self.model: routing})
                state.public_port = nginx.public_port
                state.route = routing_dict(routing)
                state.note("routing", generation=state.generation, canary_weight=routing.canary_weight)
                self._save(state)
        except NginxError as exc:
            raise DeploymentError(str(exc)) from exc

    # -- the rollout steps ------------------------------------------------------------------

    def ensure_stable(self, champion_version: str, timeout: float) -> None:
        """Stable runs, serves ``champion_version`` and receives the traffic."""
        champion_version = checked_version(champion_version)
        state = self._state()
        alive: list[ProcessRecord] = []
        for record in state.replicas("stable"):
            if len(alive) < self.replicas and self._alive_or_restarting(record, min(timeout, 120.0)):
                alive.append(record)
            else:
                self._stop(record)  # dead, or more replicas than configured
        state.set_replicas("stable", alive)
        if alive:
            self._save(state)
            stale = [r for r in alive if served_version(health(r.port)[1]) != champion_version]
            if stale:
                self._reload_stable(state, champion_version, timeout, stale)
        missing = self.replicas - len(alive)
        if missing:
            token = alive[0].admin_token if alive else secrets.token_urlsafe(24)
            env = {
                "MODEL_AUTO_REFRESH_SECONDS": str(self.stable_refresh_seconds),
                **self.stable_env,
                "ADMIN_API_TOKEN": token,
            }
            uri = f"models:/{self.model_name}@champion"
            started = self._start_replicas("stable", uri, champion_version, env, timeout, missing)
            state.set_replicas("stable", [*alive, *started])
            for record in started:
                state.note("stable started", version=champion_version, pid=record.pid, port=record.port)
        canary = state.replicas("canary")
        if canary and not all(pid_alive(r.pid) for r in canary):
            state.note("canary gone", version=canary[0].version)
            for record in canary:
                self._stop(record)
            state.set_replicas("canary", [])
            state.canary_weight = 0
        self._apply(state)

    def start_canary(self, version: str, timeout: float) -> None:
        """A canary process for ``version``, ready, routed only for pinned requests (weight 0)."""
        version = checked_version(version)
        state = self._state()
        if state.canary is not None:
            self.retire_canary()
            state = self._state()
        self._rotate_access_log(state)
        env = {"MODEL_AUTO_REFRESH_SECONDS": "0", **self.canary_env, "ADMIN_API_TOKEN": ""}
        records = self._start_replicas(
            "canary", f"models:/{self.model_name}/{version}", version, env, timeout, self.replicas
        )
        for record in records:
            record.upstream_port = self.canary_upstream_port(record)
            state.note("canary started", version=version, pid=record.pid, port=record.port)
        state.set_replicas("canary", records)
        state.canary_weight = 0
        self._apply(state)

    def canary_health(self) -> tuple[bool, str]:
        """Healthy when every canary replica runs, never restarted, and answers ``/health`` with its version."""
        replicas = self._state().replicas("canary")
        if not replicas:
            return False, "no canary is deployed"
        detail = ""
        for index, canary in enumerate(replicas):
            healthy, detail = self._replica_health(canary)
            if not healthy:
                return False, detail if len(replicas) == 1 else f"replica {index + 1}/{len(replicas)}: {detail}"
        return True, detail

    def _replica_health(self, canary: ProcessRecord) -> tuple[bool, str]:
        if not pid_alive(canary.pid):
            return False, f"canary process {canary.pid} is gone"
        supervised = self.supervisor_status(canary)
        if supervised is not None and supervised.restarts > 0:
            return False, (
                f"canary restarted {supervised.restarts} time(s), last: {supervised.describe_last_exit()}; "
                f"now {supervised.state}"
            )
        status, body = health(canary.port, timeout=2.0)
        if status != 200:
            return False, f"/health answered {status}" if status else "/health unreachable"
        serving = served_version(body)
        if serving not in (None, canary.version):
            return False, f"serves version {serving}, expected {canary.version}"
        return True, str(body.get("status", "ok"))

    def set_canary_weight(self, weight: int) -> None:
        state = self._state()
        if state.canary is None:
            raise DeploymentError("no canary to send traffic to")
        state.canary_weight = int(weight)
        self._apply(state)

    def _reload_stable(
        self, state: DeploymentState, version: str, timeout: float, replicas: list[ProcessRecord] | None = None
    ) -> None:
        """Every stable replica (or those given) re-resolves ``@champion`` and serves ``version``.

        One replica after the other: while one swaps, the others answer with the old version.
        """
        targets = state.replicas("stable") if replicas is None else replicas
        if not targets:
            raise DeploymentError("no stable process")
        for stable in targets:
            self._reload_one(state, stable, version, timeout)

    def _reload_one(self, state: DeploymentState, stable: ProcessRecord, version: str, timeout: float) -> None:
        try:
            response = httpx.post(
                f"{stable.url}/admin/reload", headers={"Authorization": f"Bearer {stable.admin_token}"}, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise DeploymentError(f"stable /admin/reload failed: {exc!r}") from exc
        if response.status_code != 200:
            raise DeploymentError(f"stable /admin/reload answered {response.status_code}: {response.text[:300]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if served_version(health(stable.port)[1]) == version:
                stable.version = version
                state.note("stable serves", version=version)
                self._save(state)
                return
            time.sleep(0.2)
        raise DeploymentError(f"stable did not switch to version {version} within {timeout:.0f}s")

    def serve_on_stable(self, version: str, timeout: float) -> None:
        """Stable re-resolves ``@champion`` now and hot-swaps to ``version``."""
        self._reload_stable(self._state(), checked_version(version), timeout)

    def retire_canary(self) -> None:
        """No new canary traffic; once drained, no route; then stop the process."""
        state = self._state()
        if state.canary is None:
            if state.stable is not None:
                self._apply(state)
            return
        contacts = RouterLogReader(self.access_log, self._canary_addresses(state))
        state.canary_weight = 0
        self._apply(state, pin_canary=True)  # pinned feedback still reaches answers the canary gave
        self._router().wait_drained(timeout=30)
        self._wait_quiet(contacts)
        self._apply(state, include_canary=False)
        self._router().wait_drained(timeout=30)
        canary = state.replicas("canary")
        state.set_replicas("canary", [])
        state.note("canary retired", version=canary[0].version)
        self._save(state)
        for record in canary:
            self._stop(record)

    def _wait_quiet(self, contacts: RouterLogReader) -> None:
        """Until no request reached the canary for ``drain_seconds`` (feedback for its last answers)."""
        last = time.time()
        deadline = time.monotonic() + MAX_DRAIN_SECONDS
        while time.monotonic() < deadline:
            seen = contacts.latest_contact()
            if seen is not None:
                last = max(last, seen)
            if time.time() - last >= self.drain_seconds:
                return
            time.sleep(0.1)

    # -- observation ------------------------------------------------------------------------

    def metrics_targets(self, track: str) -> list[str]:
        """The ``/metrics`` URLs to sum for ``track``: every replica of the model while ``track`` runs.

        Feedback is counted by whichever process receives it, under the track and version its
        receipt names (:mod:`serving.feedback`), so a track's feedback counters may sit on any
        replica, of either track; the metric source sums series by their labels.
        """
        state = self._state()
        if not state.replicas(track):
            return []
        return [f"{r.url}/metrics" for name in TRACKS for r in state.replicas(name)]

    @staticmethod
    def _canary_addresses(state: DeploymentState) -> list[str]:
        return [f"127.0.0.1:{r.upstream_port}" for r in state.replicas("canary")]

    def router_view(self) -> RouterLogReader | None:
        state = self._state()
        if state.canary is None:
            return None
        return RouterLogReader(self.access_log, self._canary_addresses(state))

    def _rotate_access_log(self, state: DeploymentState) -> None:
        router = self._router(state)
        try:
            if self.access_log.stat().st_size < ACCESS_LOG_ROTATE_BYTES:
                return
        except OSError:
            return
        os.replace(self.access_log, self.access_log.with_suffix(".log.1"))
        pid = router.master_pid()
        if pid is not None:
            os.kill(pid, signal.SIGUSR1)  # reopen log files

    def status(self) -> DeploymentStatus:
        state = self._state()
        router = self._router(state)

        def describe(record: ProcessRecord | None) -> str:
            if record is None:
                return "-"
            alive = "up" if self._alive(record) else "DOWN"
            line = f"pid {record.pid}, port {record.port}, {record.model_uri}, {alive}"
            supervised = self.supervisor_status(record)
            if supervised is not None:
                line += (
                    f"; supervisor {supervised.state}, serving pid {supervised.child_pid or '-'}, "
                    f"restarts {supervised.restarts}, last exit {supervised.describe_last_exit()}"
                )
            return line

        holder = self.lock_holder()

        routed = state.route is not None and router.running()
        default = self.router.default_model()
        return DeploymentStatus(
            backend=self.kind,
            model_name=self.model_name,
            model=self.model,
            public_url=self.public_url if routed else None,
            stable_version=state.stable.version if state.stable else None,
            canary_version=state.canary.version if state.canary else None,
            canary_weight=state.canary_weight if state.canary else 0,
            detail={
                "nginx": (
                    f"pid {router.master_pid()} on 127.0.0.1:{router.public_port} (shared by every model)"
                    if router.running()
                    else "not running"
                ),
                "routes": (
                    f"/models/{self.model}/..."
                    + (" and the unprefixed paths (default model)" if default == self.model else "")
                    if routed
                    else "-"
                ),
                **{
                    track if len(state.replicas(track)) < 2 else f"{track} {index + 1}": describe(record)
                    for track in TRACKS
                    for index, record in enumerate(state.replicas(track) or [None])
                },
                "lock": f"held by {holder.describe()}" if holder else "free",
                "state file": str(self.store.path),
            },
        )

    def shutdown(self) -> None:
        """Take this model off the router, stop its serving processes, forget its state.

        Other models keep their routes and processes; nginx stops once no model is routed.
        """
        try:
            with self.router.locked():
                self.router.apply({self.model: None})
                state = self.store.load()
                if state is not None:
                    state.route = None
                    self.store.save(state)
        except NginxError as exc:
            raise DeploymentError(str(exc)) from exc
        if state is None:
            return
        for track in TRACKS:
            for record in state.replicas(track):
                self._stop(record)
            state.set_replicas(track, [])
        self.store.clear()
        self._write_prometheus_targets(state)

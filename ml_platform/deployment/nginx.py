"""The local router: one nginx on the public port in front of every deployed model's serving processes.

One instance for the whole platform home, with its own prefix
(``<home>/deployments/_router/``: config, pid, error log, temp folders), so it
needs no root and touches nothing system-wide. Its config is rendered from
every deployed model's routing (:class:`RouterConfig`; :mod:`.router` collects
it from the models' state files). Every change is a new config *generation*:
written, checked with ``nginx -t``, applied by a graceful reload (SIGHUP: new
workers take new connections, old workers finish what they hold), then
confirmed by asking ``/_deployment`` which generation answers.

Paths: ``/models/<name>/<path>`` goes to model ``<name>``'s pools as
``/<path>`` (the prefix is stripped); the unprefixed paths go to the default
model (``ml_platform.catalog.default_model_name()``), so single-model clients
keep working; ``/models/<unknown>/...`` answers a JSON 404. Each model's
requests are written to that model's own access log
(``<home>/deployments/<name>/router/access.log``); upstream, split and map
names are prefixed ``<name>__`` so two models never share a pool.

Per model:

- ``X-ML-Track: canary`` / ``stable`` pins a request to a track (smoke tests;
  feedback for an answer, whose body names its ``track``); a request pinned
  to the canary goes to the canary only, never to a backup (feedback for a
  canary answer means nothing to stable, and a smoke test must not be
  answered by stable);
- otherwise ``split_clients`` on the request id (``X-Request-ID`` when sent)
  sends ``weight`` percent to the canary;
- the canary pool lists the stable process as ``backup``: a canary that
  refuses, resets, times out or answers 502/503/504 has the request retried on
  stable (``/predict`` is retried even after it was sent: predictions are
  side-effect free; so is ``/feedback``: the shared ledger counts a row once);
- a track may run several replicas (``Routing.*_peer_ports``): its pool lists
  them all (round robin), with passive health checks (``max_fails=1``), so a
  dead replica is taken out and its failed attempt retried on another;
- ``keepalive_timeout 0``: every client connection closes after its answer,
  so a reload never races a request on a reused idle connection (the one way
  a graceful reload can otherwise reset a client);
- passive health checks: the canary server is marked down for
  ``fail_timeout`` after ``max_fails`` failed attempts (its share then goes
  straight to the stable backup, and the access log shows such requests with
  ``pool`` canary but no canary attempt: the router view counts them as failed
  canary attempts); a lone stable server is never marked down (nginx ignores
  ``max_fails`` for a single server) and fails fast while it restarts;
  ``proxy_connect_timeout`` is short (local upstreams accept in microseconds),
  ``proxy_read_timeout`` bounds a hung upstream; nginx's own 502/504 answers are
  JSON (``{"error": ..., "detail": ...}``).

Every value written into the config is either an integer checked against its
range, a fixed word, a model name matching ``catalog.MODEL_NAME_PATTERN``, or a
path quoted as an nginx string (``"`` and the backslash escaped by a backslash);
a path with a ``$`` (nginx would read a variable), a control character or a NUL is
refused with :class:`NginxConfigValueError`.

The access log is JSON Lines with the upstream address, status and time of
every attempt: the router's view of the canary (see :mod:`.router_log`).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ml_platform.catalog import MODEL_NAME_PATTERN
from ml_platform.deployment.processes import pid_alive, pid_runs

ACCESS_LOG_FORMAT = (
    'log_format canary escape=json \'{"t":$msec,"uri":"$uri","model":"$ml_model","pool":"$ml_pool",'
    '"addr":"$upstream_addr","ustatus":"$upstream_status","urt":"$upstream_response_time",'
    '"status":$status,"rid":"$route_key"}\';'
)


CONNECT_TIMEOUT = "1s"
READ_TIMEOUT = "30s"
SEND_TIMEOUT = "10s"
CANARY_MAX_FAILS = 1
CANARY_FAIL_TIMEOUT = "3s"
MAX_REPLICAS = 16  # serving processes per track
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")


class NginxError(RuntimeError):
    """nginx refused a config, did not start, or did not apply a generation."""


class NginxConfigValueError(NginxError, ValueError):
    """A value cannot be written into nginx.conf safely."""


def quote(value: str | Path, what: str = "value") -> str:
    """``value`` as a double-quoted nginx string; refuse what quoting cannot make literal.

    nginx unescapes ``\\"``, ``\\\\`` (and ``\\'``) inside quotes; ``;``, ``{``, ``}``,
    ``#`` and spaces are literal there. ``$`` starts a variable in directives
    that take variables and has no escape, so it is refused, as are control
    characters (a newline would be literal, but no path of ours needs one).
    """
    text = str(value)
    bad = sorted({c for c in text if c == "$" or ord(c) < 32 or ord(c) == 127})
    if not text or bad:
        shown = ", ".join(repr(c) for c in bad) or "empty"
        raise NginxConfigValueError(f"{what} {text!r} cannot go into nginx.conf (refused characters: {shown})")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def port_value(value: object, what: str) -> int:
    """A TCP port as an int in 1..65535 (bools and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise NginxConfigValueError(f"{what} must be a TCP port (1-65535), got {value!r}")
    return value


def _int_value(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise NginxConfigValueError(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


@dataclass(frozen=True)
class Routing:
    """One model's routing: the upstream ports and the canary's share."""

    generation: int  # the model's own routing generation (answered by /models/<name>/_deployment)
    stable_port: int
    canary_port: int | None = None
    canary_weight: int = 0
    pin_canary: bool = True  # route `X-ML-Track: canary` to the canary (off while retiring it)
    stable_peer_ports: tuple[int, ...] = ()  # the stable track's other replicas (share its traffic evenly)
    canary_peer_ports: tuple[int, ...] = ()  # the canary's other replicas

    def stable_ports(self) -> tuple[int, ...]:
        return (self.stable_port, *self.stable_peer_ports)

    def canary_ports(self) -> tuple[int, ...]:
        return () if self.canary_port is None else (self.canary_port, *self.canary_peer_ports)


@dataclass(frozen=True)
class ModelRoute:
    """One deployed model in the shared router: its name (route prefix), routing and access log."""

    model: str
    routing: Routing
    access_log: Path


@dataclass(frozen=True)
class RouterConfig:
    """Everything one nginx.conf holds: every deployed model's route, and which one unprefixed paths serve."""

    generation: int  # the router's config generation (answered by /_deployment)
    routes: tuple[ModelRoute, ...]
    default_model: str | None = None

    def route(self, model: str) -> ModelRoute | None:
        return next((r for r in self.routes if r.model == model), None)


def model_value(value: object, what: str = "model name") -> str:
    """A model name as it may appear in nginx.conf (upstream names, variables, locations, regexes)."""
    if not isinstance(value, str) or not MODEL_NAME_PATTERN.match(value):
        raise NginxConfigValueError(
            f"{what} {value!r} cannot go into nginx.conf (model names match {MODEL_NAME_PATTERN.pattern})"
        )
    return value


def _user_directive() -> str:
    """As root, keep workers on the same user as the master (temp dirs live in our home)."""
    if os.geteuid() != 0:
        return ""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    for what, name in (("user", user), ("group", group)):
        if not _NAME.match(name):
            raise NginxConfigValueError(f"{what} name {name!r} cannot go into nginx.conf")
    return f"user {user} {group};"


def _servers(ports: tuple[int, ...], *, backup: bool = False) -> str:
    """``server`` lines of one track's replicas.

    One replica: ``max_fails=0`` (nginx ignores it for a lone server anyway; it fails fast while
    its supervisor restarts it). Several: passive health checks, so a dead replica is taken out
    for ``fail_timeout`` after one failed attempt and its share goes to the others (the failed
    attempt itself is retried on the next one: ``proxy_next_upstream``).
    """
    if backup:
        return " ".join(f"server 127.0.0.1:{port} backup;" for port in ports)
    if len(ports) == 1:
        return f"server 127.0.0.1:{ports[0]} max_fails=0;"
    return " ".join(
        f"server 127.0.0.1:{port} max_fails={CANARY_MAX_FAILS} fail_timeout={CANARY_FAIL_TIMEOUT};" for port in ports
    )


def _checked_ports(model: str, track: str, first: int | None, peers: object) -> tuple[int, ...]:
    if first is None:
        return ()
    if not isinstance(peers, tuple) or len(peers) > MAX_REPLICAS - 1:
        raise NginxConfigValueError(f"{model}: {track} replicas must be a tuple of at most {MAX_REPLICAS - 1} ports")
    ports = [port_value(first, f"{model}: {track} upstream port")]
    ports += [port_value(p, f"{model}: {track} replica port") for p in peers]
    if len(set(ports)) != len(ports):
        raise NginxConfigValueError(f"{model}: {track} replicas share a port: {ports}")
    return tuple(ports)


def _model_http_block(model: str, routing: Routing) -> tuple[list[str], int]:
    """Upstreams, split and track map of one model (names prefixed ``<model>__``); and its checked weight.

    Each track's pool lists all its replicas (round robin: the track's share of traffic is
    spread evenly across them); the canary pool lists stable's replicas as ``backup``.
    """
    stable = _checked_ports(model, "stable", routing.stable_port, routing.stable_peer_ports)
    canary = _checked_ports(model, "canary", routing.canary_port, routing.canary_peer_ports)
    has_canary = bool(canary)
    lines = [f"  upstream {model}__stable {{ {_servers(stable)} }}"]
    if has_canary:
        canary_servers = (
            f"server 127.0.0.1:{canary[0]} max_fails={CANARY_MAX_FAILS} fail_timeout={CANARY_FAIL_TIMEOUT};"
            if len(canary) == 1
            else _servers(canary)
        )
        lines.append(f"  upstream {model}__canary {{ {canary_servers} {_servers(stable, backup=True)} }}")
        lines.append(f"  upstream {model}__canary_pinned {{ {_servers(canary)} }}")
    weight = _int_value(routing.canary_weight, f"{model}: canary weight", 0, 100) if has_canary else 0
    split = (f"{weight}% {model}__canary; " if 0 < weight < 100 else "") + (
        f"* {model}__canary;" if weight >= 100 else f"* {model}__stable;"
    )
    pinned = f"{model}__canary_pinned" if has_canary and routing.pin_canary is True else f"{model}__stable"
    lines.append(f'  split_clients "${{route_key}}" ${model}__weighted {{ {split} }}')
    lines.append(
        f"  map $http_x_ml_track ${model}__pool {{ canary {pinned}; stable {model}__stable; "
        f"default ${model}__weighted; }}"
    )
    return lines, weight


def _proxy_location(match: str, model: str, log: str, *, prefixed: bool, predict: bool) -> str:
    """One proxied location; ``predict``: retried on the next server even after it was sent (``/predict``
    is side-effect free; ``/feedback`` counts each row once in the shared ledger, so a retry never counts
    twice)."""
    rewrite = f"rewrite ^/models/{model}(/.*)$ $1 break; " if prefixed else ""
    retry = " non_idempotent" if predict else ""
    return (
        f"    location {match} {{\n"
        f"      set $ml_model {model}; set $ml_pool ${model}__pool; access_log {log} canary;\n"
        f"      error_page 502 /_errors/{model}/502; error_page 504 /_errors/{model}/504;\n"
        f"      {rewrite}proxy_pass http://$ml_pool;\n"
        f"      proxy_next_upstream error timeout http_502 http_503 http_504{retry};\n"
        f"    }}"
    )


def render_config(prefix: Path, public_port: int, config: RouterConfig) -> str:
    """The complete nginx.conf for one router generation (every value validated or quoted).

    Per model ``m``: ``/models/m/<path>`` goes to ``m``'s pools as ``/<path>``; the unprefixed
    paths go to ``config.default_model`` (when it is routed); ``/models/<other>/`` answers a
    JSON 404. Each model's requests are logged to its own access log.
    """
    tmp = prefix / "tmp"
    public_port = port_value(public_port, "public port")
    generation = _int_value(config.generation, "generation", 0, 2**53)
    http_blocks: list[str] = []
    locations: list[str] = []
    statuses: list[str] = []
    names = [model_value(route.model) for route in config.routes]
    if len(set(names)) != len(names):
        raise NginxConfigValueError(f"a model is routed twice: {names}")
    default = config.default_model if config.default_model in names else None
    for route in config.routes:
        model = route.model
        block, weight = _model_http_block(model, route.routing)
        http_blocks += [f"  # model {model}", *block]
        model_generation = _int_value(route.routing.generation, f"{model}: generation", 0, 2**53)
        status = f'{{"model": "{model}", "generation": {model_generation}, "canary_weight": {weight}}}'
        statuses.append(f'"{model}": {status}')
        log = quote(route.access_log, f"{model}: access log path")
        locations += [
            f"    location = /models/{model}/_deployment {{ default_type application/json; return 200 '{status}'; }}",
            _proxy_location(f"= /models/{model}/predict", model, log, prefixed=True, predict=True),
            _proxy_location(f"= /models/{model}/feedback", model, log, prefixed=True, predict=True),
            _proxy_location(f"/models/{model}/", model, log, prefixed=True, predict=False),
            f"    location = /_errors/{model}/502 {{\n"
            f"      internal; set $ml_model {model}; access_log {log} canary; default_type application/json;\n"
            f'      return 502 \'{{"error": "upstream unavailable", '
            f'"detail": "no serving process of this track answered"}}\';\n    }}',
            f"    location = /_errors/{model}/504 {{\n"
            f"      internal; set $ml_model {model}; access_log {log} canary; default_type application/json;\n"
            f'      return 504 \'{{"error": "upstream timeout", '
            f'"detail": "the serving process did not answer in time"}}\';\n    }}',
        ]
        if model == default:
            log_default = log
            locations += [
                _proxy_location("= /predict", model, log_default, prefixed=False, predict=True),
                _proxy_location("= /feedback", model, log_default, prefixed=False, predict=True),
                _proxy_location("/", model, log_default, prefixed=False, predict=False),
            ]
    if default is None:
        locations.append(
            '    location / { default_type application/json; return 404 \'{"error": "no default model is '
            'deployed", "detail": "use /models/<name>/..."}\'; }'
        )
    status = (
        f'{{"generation": {generation}, "default_model": {"null" if default is None else chr(34) + default + chr(34)}, '
        f'"models": {{{", ".join(statuses)}}}}}'
    )
    return f"""# Written by ml_platform.deployment.nginx (generation {generation}); do not edit.
{_user_directive()}
worker_processes 1;
pid {quote(prefix / "nginx.pid", "pid path")};
error_log {quote(prefix / "logs" / "error.log", "error log path")} warn;
events {{ worker_connections 1024; }}
http {{
  client_body_temp_path {quote(tmp / "client_body", "temp path")};
  proxy_temp_path {quote(tmp / "proxy", "temp path")};
  fastcgi_temp_path {quote(tmp / "fastcgi", "temp path")};
  uwsgi_temp_path {quote(tmp / "uwsgi", "temp path")};
  scgi_temp_path {quote(tmp / "scgi", "temp path")};
  client_max_body_size 10m;
  keepalive_timeout 0;
  server_tokens off;
  map $http_x_request_id $route_key {{ "" $request_id; default $http_x_request_id; }}
  {ACCESS_LOG_FORMAT}
  access_log {quote(prefix / "logs" / "access.log", "access log path")} canary;
{chr(10).join(http_blocks)}
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  proxy_set_header X-Request-ID $route_key;
  proxy_connect_timeout {CONNECT_TIMEOUT};
  proxy_send_timeout {SEND_TIMEOUT};
  proxy_read_timeout {READ_TIMEOUT};
  proxy_next_upstream_tries 2;
  server {{
    listen 127.0.0.1:{public_port};
    set $ml_model ""; set $ml_pool "";
    location = /_deployment {{ default_type application/json; return 200 '{status}'; }}
    location /models/ {{
      default_type application/json;
      return 404 '{{"error": "no such model deployed", "detail": "GET /_deployment lists the routed models"}}';
    }}
{chr(10).join(locations)}
  }}
}}
"""


CONFIRMATIONS = 3  # consecutive answers of the new generation before a reload counts as applied


class NginxRouter:
    """Start, reconfigure (gracefully) and stop one local nginx instance."""

    def __init__(self, prefix: Path, public_port: int, binary: str = "nginx") -> None:
        self.prefix = prefix
        self.public_port = public_port
        self.binary = binary
        self.conf = prefix / "nginx.conf"
        self.pid_file = prefix / "nginx.pid"
        self.error_log = prefix / "logs" / "error.log"
        self.access_log = prefix / "logs" / "access.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def _cmd(self, *extra: str, conf: Path | None = None) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(conf or self.conf), "-e", str(self.error_log), *extra]

    def master_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_runs(pid, "nginx") else None

    def running(self) -> bool:
        return self.master_pid() is not None

    def apply(self, config: RouterConfig, timeout: float = 30.0) -> None:
        """Write, check and apply ``config``; return once that generation answers."""
        text = render_config(self.prefix, self.public_port, config)  # refuses bad values before anything is written
        for folder in (self.prefix / "logs", self.prefix / "tmp", *(r.access_log.parent for r in config.routes)):
            folder.mkdir(parents=True, exist_ok=True)
        candidate = self.prefix / f"nginx.conf.{config.generation}"
        candidate.write_text(text)
        check = subprocess.run(self._cmd("-t", "-q", conf=candidate), capture_output=True, text=True, check=False)
        if check.returncode != 0:
            candidate.unlink(missing_ok=True)
            raise NginxError(f"nginx rejected generation {config.generation}: {check.stderr.strip()}")
        os.replace(candidate, self.conf)
        pid = self.master_pid()
        if pid is None:
            started = subprocess.run(self._cmd(), capture_output=True, text=True, check=False)
            if started.returncode != 0:
                raise NginxError(f"nginx did not start: {started.stderr.strip()}")
        else:
            os.kill(pid, signal.SIGHUP)
        self.wait_generation(config.generation, timeout)

    def generation(self) -> int | None:
        try:
            response = httpx.get(f"{self.url}/_deployment", timeout=2)
            return int(response.json()["generation"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def wait_generation(self, generation: int, timeout: float) -> None:
        """Until new connections are served by ``generation`` (old workers may still finish requests).

        An old worker can accept a few more connections between the new workers' start and its own
        shutdown, so the generation must answer several times in a row.
        """
        deadline = time.monotonic() + timeout
        in_a_row = 0
        while time.monotonic() < deadline:
            in_a_row = in_a_row + 1 if self.generation() == generation else 0
            if in_a_row >= CONFIRMATIONS:
                return
            time.sleep(0.02 if in_a_row else 0.05)
        raise NginxError(f"nginx did not apply generation {generation} within {timeout:.0f}s; see {self.error_log}")

    def old_workers(self) -> list[int]:
        """Worker processes of earlier generations still finishing their requests."""
        master = self.master_pid()
        if master is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid != master:
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
            if "shutting down" in cmdline:
                found.append(int(entry.name))
        return found

    def wait_drained(self, timeout: float) -> bool:
        """Until no worker of an earlier generation is left (their in-flight requests are done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.old_workers():
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop (SIGQUIT), then SIGTERM if it lingers."""
        pid = self.master_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)

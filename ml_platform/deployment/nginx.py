"""A local nginx that splits traffic between the stable and canary serving processes.

One instance per deployed model, with its own prefix under the platform home
(config, pid, logs, temp folders), so it needs no root and touches nothing
system-wide. Every change is a new config *generation*: written, checked with
``nginx -t``, applied by a graceful reload (SIGHUP: new workers take new
connections, old workers finish what they hold), then confirmed by asking
``/_deployment`` which generation answers.

Routing:

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
  side-effect free);
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
range, a fixed word, or a path quoted as an nginx string (``"`` and the
backslash escaped by a backslash); a path with a ``$`` (nginx would read a variable), a control
character or a NUL is refused with :class:`NginxConfigValueError`.

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

from ml_platform.deployment.processes import pid_alive, pid_runs

ACCESS_LOG_FORMAT = (
    'log_format canary escape=json \'{"t":$msec,"uri":"$uri","pool":"$pool",'
    '"addr":"$upstream_addr","ustatus":"$upstream_status","urt":"$upstream_response_time",'
    '"status":$status,"rid":"$route_key"}\';'
)


CONNECT_TIMEOUT = "1s"
READ_TIMEOUT = "30s"
SEND_TIMEOUT = "10s"
CANARY_MAX_FAILS = 1
CANARY_FAIL_TIMEOUT = "3s"
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
    """What the router should do: the upstream ports and the canary's share."""

    generation: int
    stable_port: int
    canary_port: int | None = None
    canary_weight: int = 0
    pin_canary: bool = True  # route `X-ML-Track: canary` to the canary (off while retiring it)


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


def render_config(prefix: Path, public_port: int, routing: Routing) -> str:
    """The complete nginx.conf for one generation (every value validated or quoted)."""
    tmp = prefix / "tmp"
    public_port = port_value(public_port, "public port")
    stable_port = port_value(routing.stable_port, "stable upstream port")
    canary_port = None if routing.canary_port is None else port_value(routing.canary_port, "canary upstream port")
    generation = _int_value(routing.generation, "generation", 0, 2**53)
    has_canary = canary_port is not None
    upstreams = [f"  upstream stable {{ server 127.0.0.1:{stable_port} max_fails=0; }}"]
    if has_canary:
        upstreams.append(
            f"  upstream canary {{ server 127.0.0.1:{canary_port} max_fails={CANARY_MAX_FAILS} "
            f"fail_timeout={CANARY_FAIL_TIMEOUT}; server 127.0.0.1:{stable_port} backup; }}"
        )
        upstreams.append(f"  upstream canary_pinned {{ server 127.0.0.1:{canary_port} max_fails=0; }}")
    weight = _int_value(routing.canary_weight, "canary weight", 0, 100) if has_canary else 0
    split = (f"{weight}% canary; " if 0 < weight < 100 else "") + ("* canary;" if weight >= 100 else "* stable;")
    pinned_canary = "canary_pinned" if has_canary and routing.pin_canary is True else "stable"
    status = f'{{"generation": {generation}, "canary_weight": {weight}}}'
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
  split_clients "${{route_key}}" $weighted_pool {{ {split} }}
  map $http_x_ml_track $pool {{ canary {pinned_canary}; stable stable; default $weighted_pool; }}
  {ACCESS_LOG_FORMAT}
  access_log {quote(prefix / "logs" / "access.log", "access log path")} canary;
{chr(10).join(upstreams)}
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
    error_page 502 /_errors/502;
    error_page 504 /_errors/504;
    location = /_errors/502 {{
      internal; default_type application/json;
      return 502 '{{"error": "upstream unavailable", "detail": "no serving process of this track answered"}}';
    }}
    location = /_errors/504 {{
      internal; default_type application/json;
      return 504 '{{"error": "upstream timeout", "detail": "the serving process did not answer in time"}}';
    }}
    location = /_deployment {{ default_type application/json; return 200 '{status}'; }}
    location = /predict {{
      proxy_pass http://$pool;
      proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
    }}
    location / {{
      proxy_pass http://$pool;
      proxy_next_upstream error timeout http_502 http_503 http_504;
    }}
  }}
}}
"""


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

    def apply(self, routing: Routing, timeout: float = 30.0) -> None:
        """Write, check and apply ``routing``; return once that generation answers."""
        for folder in (self.prefix / "logs", self.prefix / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        candidate = self.prefix / f"nginx.conf.{routing.generation}"
        candidate.write_text(render_config(self.prefix, self.public_port, routing))
        check = subprocess.run(self._cmd("-t", "-q", conf=candidate), capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise NginxError(f"nginx rejected generation {routing.generation}: {check.stderr.strip()}")
        os.replace(candidate, self.conf)
        pid = self.master_pid()
        if pid is None:
            started = subprocess.run(self._cmd(), capture_output=True, text=True, check=False)
            if started.returncode != 0:
                raise NginxError(f"nginx did not start: {started.stderr.strip()}")
        else:
            os.kill(pid, signal.SIGHUP)
        self.wait_generation(routing.generation, timeout)

    def generation(self) -> int | None:
        try:
            response = httpx.get(f"{self.url}/_deployment", timeout=2)
            return int(response.json()["generation"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def wait_generation(self, generation: int, timeout: float) -> None:
        """Until new connections are served by ``generation`` (old workers may still finish requests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.generation() == generation:
                return
            time.sleep(0.05)
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

"""A Kubernetes API client for the deployer: lightkube, configured like ``kubectl``, hardened for long runs.

:func:`connect` returns a :class:`lightkube.Client` (typed resources, sync) whose
connection comes from, in this order:

1. ``api_url`` (``KUBE_API_URL``): that server, with the token file and CA file given
   (the service-account ones by default);
2. a kubeconfig: the explicit ``kubeconfig`` path, else ``$KUBECONFIG`` (a ``:``-separated
   list is merged like kubectl: first file wins per entry), at ``context`` (else the
   current context);
3. in-cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the pod's service account;
4. ``~/.kube/config``.

Two things lightkube leaves to the caller are added by :class:`KubeTransport`, the
HTTP transport under the client:

- **token rotation**: a token *file* (in-cluster service account, projected tokens
  rotate about hourly; ``tokenFile`` in a kubeconfig) is re-read whenever the file
  changes (a ``stat`` per request, the kubelet swaps the file atomically) and on a
  401, so a long rollout never sends an expired token;
- **retries** with exponential backoff and jitter on transient failures: 429 (its
  ``Retry-After`` honoured, capped), 500/502/503/504 and connection errors/timeouts.
  Conflicts (409) are not transient at this level; callers resolve them with a re-read
  (:mod:`.kubernetes`, :mod:`.kube_rollout_state`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2

from ml_platform.deployment.backend import DeploymentError

if TYPE_CHECKING:
    from lightkube import Client
    from lightkube.config.kubeconfig import KubeConfig, SingleConfig

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How transient API failures are retried: ``attempts`` in all, delays ``base * 2**n`` (+-25 % jitter)
    capped at ``cap``; a ``Retry-After`` of a 429/503 is honoured up to ``max_retry_after`` seconds."""

    attempts: int = 5
    base_seconds: float = 0.2
    cap_seconds: float = 10.0
    max_retry_after_seconds: float = 30.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_retry_after_seconds)
            except ValueError:
                pass  # an HTTP date: fall back to the backoff
        backoff = min(self.base_seconds * (2 ** (attempt - 1)), self.cap_seconds)
        return float(backoff * random.uniform(0.75, 1.25))


class TokenFile:
    """A bearer token read from a file, re-read whenever the file changes (or on demand after a 401)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None

    def _current_stamp(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()  # follows the ..data symlink the kubelet swaps
        except OSError as exc:
            raise DeploymentError(f"cannot read the API token file {self.path}: {exc}") from exc
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def token(self, *, force: bool = False) -> str:
        stamp = self._current_stamp()
        if force or self._token is None or stamp != self._stamp:
            try:
                self._token = self.path.read_text().strip()
            except OSError as exc:
                raise DeploymentError(f"cannot read the API token file {self.path}: {exc}") from exc
            self._stamp = stamp
        return self._token


class KubeTransport(httpx2.BaseTransport):
    """Wraps the real transport: sets the rotating bearer token, retries transient failures."""

    def __init__(
        self,
        inner: httpx2.BaseTransport,
        *,
        token_file: TokenFile | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.token_file = token_file
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.retried = 0  # retries made so far (observability, tests)

    def _authorize(self, request: httpx2.Request, *, force: bool = False) -> None:
        if self.token_file is not None:
            request.headers["Authorization"] = f"Bearer {self.token_file.token(force=force)}"

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self._authorize(request)
        reauthorized = False
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.inner.handle_request(request)
            except httpx2.TransportError:
                if attempt >= self.retry.attempts:
                    raise
                self.retried += 1
                self.sleep(self.retry.delay(attempt))
                continue
            if response.status_code == 401 and self.token_file is not None and not reauthorized:
                response.close()  # the token may have rotated since it was read: read it again, once
                reauthorized = True
                self._authorize(request, force=True)
                attempt -= 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retry.attempts:
                retry_after = response.headers.get("Retry-After")
                response.close()
                self.retried += 1
                self.sleep(self.retry.delay(attempt, retry_after))
                continue
            return response

    def close(self) -> None:
        self.inner.close()


@dataclass
class KubeSettings:
    """Where the API server is and how to reach it (see the module docstring for the order)."""

    kubeconfig: str | None = None
    context: str | None = None
    api_url: str | None = None
    token_file: str = str(SERVICE_ACCOUNT_DIR / "token")
    ca_file: str = str(SERVICE_ACCOUNT_DIR / "ca.crt")
    service_account_dir: str = str(SERVICE_ACCOUNT_DIR)
    timeout_seconds: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    env: dict[str, str] | None = None  # defaults to os.environ (tests pass their own)


def _merged_kubeconfig(paths: list[Path]) -> KubeConfig:
    """kubectl's merge of a ``KUBECONFIG`` list: the first file defining a name (or current-context) wins."""
    import yaml
    from lightkube.config.kubeconfig import KubeConfig

    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": []}
    seen: dict[str, set[str]] = {key: set() for key in merged}
    first: Path | None = None
    for path in paths:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DeploymentError(f"kubeconfig {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise DeploymentError(f"kubeconfig {path}: not a mapping")
        first = first or path
        if raw.get("current-context") and "current-context" not in merged:
            merged["current-context"] = raw["current-context"]
        for key in ("clusters", "contexts", "users"):
            for entry in raw.get(key) or []:
                if isinstance(entry, dict) and entry.get("name") not in seen[key]:
                    seen[key].add(str(entry.get("name")))
                    merged[key].append(entry)
    try:
        return KubeConfig.from_dict(merged, fname=first)
    except Exception as exc:  # lightkube raises KeyError/ValidationError on malformed entries
        raise DeploymentError(f"kubeconfig {', '.join(map(str, paths))}: {exc}") from exc


def load_config(settings: KubeSettings) -> SingleConfig:
    """The cluster, user and namespace to use, resolved in the documented order."""
    from lightkube.config.kubeconfig import KubeConfig
    from lightkube.config.models import Cluster, User
    from lightkube.core.exceptions import ConfigError

    env = os.environ if settings.env is None else settings.env
    if settings.api_url:
        token_file = Path(settings.token_file)
        user = User(token_file=str(token_file)) if token_file.exists() else User()
        ca = settings.ca_file if Path(settings.ca_file).exists() else None
        cluster = Cluster(server=settings.api_url, certificate_auth=ca)
        config = KubeConfig.from_one(cluster=cluster, user=user)
    else:
        listed = settings.kubeconfig or env.get("KUBECONFIG", "")
        paths = [Path(p).expanduser() for p in listed.split(os.pathsep) if p]
        sa_dir = Path(settings.service_account_dir)
        if paths:
            missing = [str(p) for p in paths if not p.is_file()]
            if settings.kubeconfig and missing:
                raise DeploymentError(f"kubeconfig not found: {', '.join(missing)}")
            paths = [p for p in paths if p.is_file()]
            if not paths:
                raise DeploymentError(f"KUBECONFIG={listed!r}: no such file")
            config = _merged_kubeconfig(paths)
        elif env.get("KUBERNETES_SERVICE_HOST") and (sa_dir / "token").exists():
            host, port = env["KUBERNETES_SERVICE_HOST"], env.get("KUBERNETES_SERVICE_PORT", "443")
            host = f"[{host}]" if ":" in host else host
            namespace_file = sa_dir / "namespace"
            config = KubeConfig.from_one(
                cluster=Cluster(server=f"https://{host}:{port}", certificate_auth=str(sa_dir / "ca.crt")),
                user=User(token_file=str(sa_dir / "token")),
                namespace=namespace_file.read_text().strip() if namespace_file.exists() else None,
            )
        elif Path(DEFAULT_KUBECONFIG).expanduser().is_file():
            config = _merged_kubeconfig([Path(DEFAULT_KUBECONFIG).expanduser()])
        else:
            raise DeploymentError(
                "no Kubernetes configuration: set a kubeconfig (KUBECONFIG or the deployer's kubeconfig), "
                "run in a cluster, or set KUBE_API_URL"
            )
    try:
        single = config.get(settings.context)
    except (ConfigError, KeyError) as exc:
        raise DeploymentError(f"kubeconfig: {exc}") from exc
    if single is None:  # pragma: no cover - lightkube returns None only with a default given
        raise DeploymentError("kubeconfig: no context")
    return single


def connect(settings: KubeSettings, *, field_manager: str, namespace: str | None = None) -> Client:
    """A lightkube client for ``settings``, with token rotation and retries (:class:`KubeTransport`)."""
    import msgspec
    from lightkube import Client
    from lightkube.config.client_adapter import verify_cluster
    from lightkube.config.models import User

    single = load_config(settings)
    user = single.user or User()
    token_file: TokenFile | None = None
    if user.token_file:
        token_file = TokenFile(os.fspath(single.abs_file(user.token_file)))
        # lightkube would read the file once and again only on a 401; the transport reads it as it changes.
        single = single._replace(user=msgspec.structs.replace(user, token=None, token_file=None))
    try:
        verify = verify_cluster(single.cluster, user, single.abs_file)
    except (OSError, ValueError) as exc:
        raise DeploymentError(f"cluster CA / client certificate: {exc}") from exc
    transport = KubeTransport(httpx2.HTTPTransport(verify=verify), token_file=token_file, retry=settings.retry)
    return Client(
        config=single,
        namespace=namespace,
        timeout=httpx2.Timeout(settings.timeout_seconds),
        field_manager=field_manager,
        transport=transport,
        trust_env=False,
    )

"""Deployers: one plain settings class per backend, each handing out the backend that deploys one model.

- :class:`LocalDeployer`: serving processes behind the one local nginx (:mod:`.local`, :mod:`.router`);
- :class:`KubernetesDeployer`: patches the per-model objects of ``deploy/k8s`` (:mod:`.kubernetes`).

Both satisfy :class:`~ml_platform.deployment.backend.Deployer` (``kind``, ``backend_for(model)``,
``describe()``); they hold no per-model field. ``model`` is the platform model name (catalog
instance, e.g. ``iris``); for callers that still pass the registered MLflow name, the catalog
entry registering it is used.

:func:`deployer_from_env` reads ``DEPLOYER_BACKEND`` (local | kubernetes),
``DEPLOY_PUBLIC_PORT``, ``DEPLOY_NAMESPACE``, ``DEPLOY_ROUTING``, ``DEPLOY_PUBLIC_URL``,
``DEPLOY_KUBECONFIG`` (else ``KUBECONFIG``), ``DEPLOY_KUBE_CONTEXT`` and ``KUBE_API_URL``;
:func:`deployer_for` is the backend of one model from the environment.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, Field

from ml_platform.deployment.backend import DeploymentBackend, DeploymentError

if TYPE_CHECKING:
    from ml_platform.deployment.kube_client import KubeSettings
    from ml_platform.deployment.kubernetes import KubernetesBackend
    from ml_platform.deployment.local import LocalBackend

DEFAULT_PUBLIC_PORT = 8080


def platform_model(name: str) -> str:
    """The catalog model ``name`` designates: a model name, or (compatibility) a registered MLflow name."""
    from ml_platform.catalog import CatalogError, list_models

    try:
        entries = list_models()
    except CatalogError as exc:
        raise DeploymentError(f"cannot deploy {name!r}: {exc}") from exc
    for entry in entries:
        if entry.name == name:
            return entry.name
    for entry in entries:
        if entry.spec.model.name == name:
            return entry.name
    raise DeploymentError(f"no model named {name!r}; models: {', '.join(e.name for e in entries)}")


class LocalDeployer(BaseModel):
    """Runs each model's stable and canary serving processes behind the one local nginx (public port)."""

    kind: ClassVar[str] = "local"

    public_port: int = Field(default=DEFAULT_PUBLIC_PORT, description="the router's port on 127.0.0.1 (all models)")
    nginx_binary: str = Field(default="nginx", description="nginx executable (PATH, else /usr/sbin/nginx)")
    serving_workers: int = Field(default=1, description="inference workers per serving process")
    stable_refresh_seconds: float = Field(default=30.0, description="stable re-resolves @champion this often")
    drain_seconds: float = Field(default=1.0, description="grace before a retired canary stops")
    canary_env: dict[str, str] = Field(default_factory=dict, description="extra env of canary processes")
    stable_env: dict[str, str] = Field(default_factory=dict, description="extra env of stable processes")
    restart_backoff_seconds: float = Field(default=0.5, description="first restart delay of a dead process")
    restart_backoff_cap_seconds: float = Field(default=30.0, description="longest delay between restarts")
    liveness_failures: int = Field(default=3, description="/health misses in a row before a restart")
    replicas: int | None = Field(
        default=None, description="serving processes per track (default: ML_PLATFORM_REPLICAS, else 1)"
    )

    @classmethod
    def from_env(cls) -> LocalDeployer:
        return cls(public_port=int(os.environ.get("DEPLOY_PUBLIC_PORT", DEFAULT_PUBLIC_PORT)))

    def backend_for(self, model: str) -> LocalBackend:
        """The backend that deploys ``model`` (its own state, lock, processes; the shared router)."""
        from ml_platform.deployment.local import LocalBackend

        return LocalBackend(
            platform_model(model),
            public_port=self.public_port,
            nginx_binary=self.nginx_binary,
            workers=self.serving_workers,
            stable_refresh_seconds=self.stable_refresh_seconds,
            drain_seconds=self.drain_seconds,
            canary_env=self.canary_env,
            stable_env=self.stable_env,
            restart_backoff_seconds=self.restart_backoff_seconds,
            restart_backoff_cap_seconds=self.restart_backoff_cap_seconds,
            liveness_failures=self.liveness_failures,
            replicas=self.replicas,
        )

    def describe(self) -> str:
        return f"local nginx on 127.0.0.1:{self.public_port} (/models/<name>/...)"


class KubernetesDeployer(BaseModel):
    """Patches each model's objects (``<model>-serving-stable``, ...), made by ``deploy/k8s/models/<model>``."""

    kind: ClassVar[str] = "kubernetes"

    namespace: str = Field(default="ml-serving", description="namespace of deploy/k8s")
    routing: Literal["gateway-api", "ingress-nginx"] = Field(default="gateway-api", description="overlay in use")
    public_url: str | None = Field(
        default=None, description="Gateway/Ingress URL; {model} is replaced by the model's host label"
    )
    kubeconfig: str | None = Field(
        default=None, description="kubeconfig path(s), ':'-separated (default: $KUBECONFIG, in-cluster, ~/.kube/config)"
    )
    kube_context: str | None = Field(default=None, description="kubeconfig context (default: its current-context)")
    kube_api_url: str | None = Field(default=None, description="API URL with the token/CA files below (no kubeconfig)")
    kube_token_file: str = Field(default="/var/run/secrets/kubernetes.io/serviceaccount/token")
    kube_ca_file: str = Field(default="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    kube_timeout_seconds: float = Field(default=30.0, description="timeout of one API request")
    kube_retries: int = Field(default=5, ge=1, description="attempts per API request on 429/5xx/connection errors")
    canary_image: str | None = Field(default=None, description="serving image for the canary")
    canary_replicas: int = Field(default=1, description="canary pods")
    scale_down_canary: bool = Field(default=False, description="scale a retired canary to 0")

    @classmethod
    def from_env(cls) -> KubernetesDeployer:
        return cls(
            namespace=os.environ.get("DEPLOY_NAMESPACE", "ml-serving"),
            routing=os.environ.get("DEPLOY_ROUTING", "gateway-api"),  # type: ignore[arg-type]
            public_url=os.environ.get("DEPLOY_PUBLIC_URL") or None,
            kube_api_url=os.environ.get("KUBE_API_URL") or None,
            kubeconfig=os.environ.get("DEPLOY_KUBECONFIG") or None,
            kube_context=os.environ.get("DEPLOY_KUBE_CONTEXT") or None,
        )

    def kube_settings(self) -> KubeSettings:
        """How to reach the API server (:mod:`.kube_client`)."""
        from ml_platform.deployment.kube_client import KubeSettings, RetryPolicy

        return KubeSettings(
            kubeconfig=self.kubeconfig,
            context=self.kube_context,
            api_url=self.kube_api_url,
            token_file=self.kube_token_file,
            ca_file=self.kube_ca_file,
            timeout_seconds=self.kube_timeout_seconds,
            retry=RetryPolicy(attempts=self.kube_retries),
        )

    def backend_for(self, model: str) -> KubernetesBackend:
        from ml_platform.catalog import get_model
        from ml_platform.deployment.kubernetes import KubeApi, KubernetesBackend

        name = platform_model(model)
        api = KubeApi.connect(self.kube_settings(), self.namespace)
        return KubernetesBackend(
            get_model(name).spec.model.name,
            api,
            model=name,
            namespace=self.namespace,
            routing=self.routing,
            public_url=self.public_url,
            canary_image=self.canary_image,
            canary_replicas=self.canary_replicas,
            scale_down_canary=self.scale_down_canary,
        )

    def describe(self) -> str:
        return f"kubernetes ({self.routing}, namespace {self.namespace})"


AnyDeployer = LocalDeployer | KubernetesDeployer


def deployer_from_env() -> AnyDeployer:
    """The deployer ``DEPLOYER_BACKEND`` selects, configured from the environment."""
    backend = os.environ.get("DEPLOYER_BACKEND", "local").strip() or "local"
    if backend == "kubernetes":
        return KubernetesDeployer.from_env()
    if backend != "local":
        raise DeploymentError(f"DEPLOYER_BACKEND={backend!r}: use local or kubernetes")
    return LocalDeployer.from_env()


def deployer_for(model: str) -> DeploymentBackend:
    """The backend deploying ``model``, from the environment (what the CLI uses)."""
    return deployer_from_env().backend_for(model)


def local_backend(model: str, **settings: object) -> LocalBackend:
    """The local backend of ``model`` with :class:`LocalDeployer` ``settings`` (e.g. ``public_port``)."""
    return LocalDeployer(**settings).backend_for(model)  # type: ignore[arg-type]

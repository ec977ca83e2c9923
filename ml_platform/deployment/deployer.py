"""The ``deployer`` resource: which backend runs serving, and its settings.

``backend="local"`` (default) runs serving processes behind a local nginx
(:mod:`.local`); ``backend="kubernetes"`` patches the objects of
``deploy/k8s`` (:mod:`.kubernetes`). :meth:`Deployer.from_env` reads
``DEPLOYER_BACKEND``, ``DEPLOY_PUBLIC_PORT``, ``DEPLOY_NAMESPACE``,
``DEPLOY_ROUTING``, ``DEPLOY_PUBLIC_URL`` and ``KUBE_API_URL``.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

from ml_platform.deployment.backend import DeploymentBackend

DEFAULT_PUBLIC_PORT = 8080


class Deployer(BaseModel):
    """Deploys model versions to the stable and canary tracks and moves traffic between them."""

    backend: Literal["local", "kubernetes"] = Field(default="local", description="local (nginx) or kubernetes")
    # local backend
    public_port: int = Field(default=DEFAULT_PUBLIC_PORT, description="local: the router's port on 127.0.0.1")
    nginx_binary: str = Field(default="nginx", description="local: nginx executable (PATH, else /usr/sbin/nginx)")
    serving_workers: int = Field(default=1, description="local: inference workers per serving process")
    stable_refresh_seconds: float = Field(default=30.0, description="local: stable re-resolves @champion this often")
    drain_seconds: float = Field(default=1.0, description="local: grace before a retired canary stops")
    canary_env: dict[str, str] = Field(default_factory=dict, description="local: extra env of canary processes")
    stable_env: dict[str, str] = Field(default_factory=dict, description="local: extra env of stable processes")
    restart_backoff_seconds: float = Field(default=0.5, description="local: first restart delay of a dead process")
    restart_backoff_cap_seconds: float = Field(default=30.0, description="local: longest delay between restarts")
    liveness_failures: int = Field(default=3, description="local: /health misses in a row before a restart")
    # kubernetes backend
    namespace: str = Field(default="ml-serving", description="kubernetes: namespace of deploy/k8s")
    routing: Literal["gateway-api", "ingress-nginx"] = Field(default="gateway-api", description="kubernetes overlay")
    public_url: str | None = Field(default=None, description="kubernetes: Gateway/Ingress URL for smoke tests")
    kube_api_url: str | None = Field(default=None, description="kubernetes: API URL (default: in-cluster)")
    kube_token_file: str = Field(default="/var/run/secrets/kubernetes.io/serviceaccount/token")
    kube_ca_file: str = Field(default="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    canary_image: str | None = Field(default=None, description="kubernetes: serving image for the canary")
    canary_replicas: int = Field(default=1, description="kubernetes: canary pods")
    scale_down_canary: bool = Field(default=False, description="kubernetes: scale a retired canary to 0")

    @classmethod
    def from_env(cls) -> Deployer:
        """The deployer configured from the environment (what the code location uses)."""
        backend = os.environ.get("DEPLOYER_BACKEND", "local").strip() or "local"
        return cls(
            backend=backend,  # type: ignore[arg-type]
            public_port=int(os.environ.get("DEPLOY_PUBLIC_PORT", DEFAULT_PUBLIC_PORT)),
            namespace=os.environ.get("DEPLOY_NAMESPACE", "ml-serving"),
            routing=os.environ.get("DEPLOY_ROUTING", "gateway-api"),  # type: ignore[arg-type]
            public_url=os.environ.get("DEPLOY_PUBLIC_URL") or None,
            kube_api_url=os.environ.get("KUBE_API_URL") or None,
        )

    def backend_for(self, model_name: str) -> DeploymentBackend:
        """The backend that deploys ``model_name``."""
        if self.backend == "kubernetes":
            from ml_platform.deployment.kubernetes import KubeApi, KubernetesBackend

            api = KubeApi.in_cluster(self.kube_api_url, self.kube_token_file, self.kube_ca_file)
            return KubernetesBackend(
                model_name,
                api,
                namespace=self.namespace,
                routing=self.routing,
                public_url=self.public_url,
                canary_image=self.canary_image,
                canary_replicas=self.canary_replicas,
                scale_down_canary=self.scale_down_canary,
            )
        from ml_platform.deployment.local import LocalBackend

        return LocalBackend(
            model_name,
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
        )

    def describe(self) -> str:
        if self.backend == "kubernetes":
            return f"kubernetes ({self.routing}, namespace {self.namespace})"
        return f"local nginx on 127.0.0.1:{self.public_port}"

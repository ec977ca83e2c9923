"""The ``kubernetes`` deployer backend: the rollout steps as patches on the objects of ``deploy/k8s``.

It changes exactly what ``deploy/k8s/README.md`` lists, with
``fieldManager=ml-platform-deployer``:

- canary weight: a JSON Patch on ``HTTPRoute/serving`` (Gateway API; ``test``
  operations make it fail atomically if the backends moved), or a JSON merge
  patch of the ``canary-weight`` annotation on ``Ingress/serving-canary``
  (ingress-nginx);
- what the canary serves: a strategic merge patch of ``Deployment/serving-canary``
  (pinned ``MODEL_URI`` and a ``ml-platform/model-version`` annotation);
- promotion: a strategic merge patch of ``Deployment/serving-stable``'s
  template annotation, so its pods restart and resolve the moved ``@champion``.

The API is called over plain HTTPS with the pod's service-account token (no
extra client library). Smoke tests go through ``public_url`` (the Gateway or
Ingress host) with ``X-ML-Track: canary``, which the route pins to the canary.
There is no router log here: error rate and latency come from the metric
source only (use the ``prometheus`` metric source in a cluster).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx

from ml_platform.deployment.backend import DeploymentError, DeploymentStatus

FIELD_MANAGER = "ml-platform-deployer"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
VERSION_ANNOTATION = "ml-platform/model-version"
CANARY_WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"
STABLE, CANARY, ROUTE = "serving-stable", "serving-canary", "serving"
CONTAINER = "serving"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

Routing = Literal["gateway-api", "ingress-nginx"]


# -- the patches (pure functions: what the backend sends) -----------------------------------


MODEL_LABEL = "ml-platform/model"


def object_prefix(model: str | None) -> str:
    """Prefix of a model's object names (its overlay's ``namePrefix``): ``iris`` -> ``iris-``, ``a_b`` -> ``a-b-``."""
    return "" if not model else model.replace("_", "-") + "-"


def route_weight_patch(weight: int, stable: str = STABLE, canary: str = CANARY) -> list[dict[str, Any]]:
    """JSON Patch for HTTPRoute rule 0: stable ``100 - weight``, canary ``weight``."""
    weight = _check_weight(weight)
    return [
        {"op": "test", "path": "/spec/rules/0/backendRefs/0/name", "value": stable},
        {"op": "test", "path": "/spec/rules/0/backendRefs/1/name", "value": canary},
        {"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": 100 - weight},
        {"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": weight},
    ]


def ingress_weight_patch(weight: int) -> dict[str, Any]:
    """JSON merge patch for the canary Ingress (the annotation is a string)."""
    return {"metadata": {"annotations": {CANARY_WEIGHT_ANNOTATION: str(_check_weight(weight))}}}


def canary_model_patch(
    model_name: str, version: str, *, image: str | None = None, replicas: int | None = None
) -> dict[str, Any]:
    """Strategic merge patch: the canary serves ``models:/<name>/<version>`` (pinned, never an alias)."""
    container: dict[str, Any] = {
        "name": CONTAINER,
        "env": [{"name": "MODEL_URI", "value": f"models:/{model_name}/{version}"}],
    }
    if image:
        container["image"] = image
    patch: dict[str, Any] = {
        "spec": {
            "template": {
                "metadata": {"annotations": {VERSION_ANNOTATION: str(version)}},
                "spec": {"containers": [container]},
            }
        }
    }
    if replicas is not None:
        patch["spec"]["replicas"] = int(replicas)
    return patch


def stable_rollout_patch(version: str) -> dict[str, Any]:
    """Strategic merge patch: roll the stable pods so they resolve ``@champion`` again."""
    return {"spec": {"template": {"metadata": {"annotations": {VERSION_ANNOTATION: str(version)}}}}}


def _check_weight(weight: int) -> int:
    value = int(weight)
    if not 0 <= value <= 100:
        raise ValueError(f"a canary weight is a percentage, got {weight}")
    return value


def rollout_complete(deployment: dict[str, Any]) -> bool:
    """The Deployment's latest template is fully rolled out and available."""
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    meta = deployment.get("metadata", {})
    replicas = int(spec.get("replicas", 1))
    if int(status.get("observedGeneration", -1)) < int(meta.get("generation", 0)):
        return False
    return all(int(status.get(key, 0)) == replicas for key in ("updatedReplicas", "readyReplicas", "availableReplicas"))


# -- the API client -------------------------------------------------------------------------


class KubeApi:
    """Just enough of the Kubernetes REST API: GET, PATCH with a content type, list pods."""

    def __init__(self, base_url: str, token: str | None, verify: str | bool = True, transport: Any = None) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(base_url=base_url, headers=headers, verify=verify, timeout=30, transport=transport)

    @classmethod
    def in_cluster(cls, api_url: str | None, token_file: str, ca_file: str) -> KubeApi:
        import os

        if api_url is None:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise DeploymentError("not in a cluster: set kube_api_url (and a token file) on the deployer")
            api_url = f"https://{host}:{port}"
        token = Path(token_file).read_text().strip() if Path(token_file).exists() else None
        verify: str | bool = ca_file if Path(ca_file).exists() else True
        return cls(api_url, token, verify)

    def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        response = self.client.get(path, params=params)
        if response.status_code >= 400:
            raise DeploymentError(f"GET {path}: {response.status_code} {response.text[:300]}")
        return dict(response.json())

    def patch(self, path: str, body: Any, content_type: str) -> dict[str, Any]:
        response = self.client.patch(
            path,
            params={"fieldManager": FIELD_MANAGER},
            json=body,
            headers={"Content-Type": content_type},
        )
        if response.status_code >= 400:
            raise DeploymentError(f"PATCH {path} ({content_type}): {response.status_code} {response.text[:300]}")
        return dict(response.json())


class KubernetesBackend:
    """Stable and canary Deployments behind weighted routing, driven by patches."""

    kind = "kubernetes"

    def __init__(
        self,
        model_name: str,
        api: KubeApi,
        *,
        model: str | None = None,
        namespace: str = "ml-serving",
        routing: Routing = "gateway-api",
        public_url: str | None = None,
        canary_image: str | None = None,
        canary_replicas: int = 1,
        scale_down_canary: bool = False,
        poll_seconds: float = 2.0,
    ) -> None:
        self.model_name = model_name
        self.model = model or ""
        prefix = object_prefix(model)  # the model's overlay prefixes every object (deploy/k8s/models/<model>)
        self.stable, self.canary, self.route = f"{prefix}{STABLE}", f"{prefix}{CANARY}", f"{prefix}{ROUTE}"
        self.api = api
        self.namespace = namespace
        self.routing = routing
        self._public_url = public_url
        self.canary_image = canary_image
        self.canary_replicas = canary_replicas
        self.scale_down_canary = scale_down_canary
        self.poll_seconds = poll_seconds

    # -- paths ------------------------------------------------------------------------------

    def deployment_path(self, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}"

    @property
    def route_path(self) -> str:
        return f"/apis/gateway.networking.k8s.io/v1/namespaces/{self.namespace}/httproutes/{self.route}"

    @property
    def ingress_path(self) -> str:
        return f"/apis/networking.k8s.io/v1/namespaces/{self.namespace}/ingresses/{self.canary}"

    @property
    def public_url_or_none(self) -> str | None:
        if not self._public_url:
            return None
        base = self._public_url.rstrip("/")
        return base.replace("{model}", object_prefix(self.model).rstrip("-")) if self.model else base

    @property
    def public_url(self) -> str:
        """This model's URL on the Gateway/Ingress: ``public_url`` with ``{model}`` replaced (each model's overlay
        gives its route the host ``<model>.<base host>``, e.g. ``https://{model}.serving.example.com``)."""
        url = self.public_url_or_none
        if url is None:
            raise DeploymentError("set public_url on the deployer: the Gateway/Ingress URL smoke tests go through")
        return url

    @contextmanager
    def lock(
        self, timeout: float = 0.0, *, holder: str = "", force: bool = False, log: Callable[[str], None] | None = None
    ) -> Iterator[None]:
        # One rollout at a time is ensured by the sensor (it waits while a deployment run is active).
        yield

    # -- helpers ----------------------------------------------------------------------------

    def _wait_rollout(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        deployment = self.api.get(self.deployment_path(name))
        while not rollout_complete(deployment):
            if time.monotonic() >= deadline:
                raise DeploymentError(f"Deployment/{name} did not finish rolling out within {timeout:.0f}s")
            time.sleep(self.poll_seconds)
            deployment = self.api.get(self.deployment_path(name))
        return deployment

    @staticmethod
    def _annotated_version(deployment: dict[str, Any]) -> str | None:
        annotations = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
        return annotations.get(VERSION_ANNOTATION)

    # -- the rollout steps ------------------------------------------------------------------

    def ensure_stable(self, champion_version: str, timeout: float) -> None:
        self.api.patch(self.deployment_path(self.stable), stable_rollout_patch(champion_version), STRATEGIC_MERGE_PATCH)
        self._wait_rollout(self.stable, timeout)

    def start_canary(self, version: str, timeout: float) -> None:
        self.set_canary_weight(0)
        patch = canary_model_patch(self.model_name, version, image=self.canary_image, replicas=self.canary_replicas)
        self.api.patch(self.deployment_path(self.canary), patch, STRATEGIC_MERGE_PATCH)
        self._wait_rollout(self.canary, timeout)

    def canary_health(self) -> tuple[bool, str]:
        try:
            deployment = self.api.get(self.deployment_path(self.canary))
        except (DeploymentError, httpx.HTTPError) as exc:
            return False, str(exc)[:200]
        if not rollout_complete(deployment):
            status = deployment.get("status", {})
            return False, f"ready {status.get('readyReplicas', 0)}/{deployment.get('spec', {}).get('replicas', 1)}"
        return True, f"ready, version {self._annotated_version(deployment)}"

    def set_canary_weight(self, weight: int) -> None:
        if self.routing == "gateway-api":
            self.api.patch(self.route_path, route_weight_patch(weight, self.stable, self.canary), JSON_PATCH)
        else:
            self.api.patch(self.ingress_path, ingress_weight_patch(weight), MERGE_PATCH)

    def serve_on_stable(self, version: str, timeout: float) -> None:
        self.api.patch(self.deployment_path(self.stable), stable_rollout_patch(version), STRATEGIC_MERGE_PATCH)
        self._wait_rollout(self.stable, timeout)

    def retire_canary(self) -> None:
        self.set_canary_weight(0)
        if self.scale_down_canary:
            self.api.patch(self.deployment_path(self.canary), {"spec": {"replicas": 0}}, STRATEGIC_MERGE_PATCH)

    # -- observation ------------------------------------------------------------------------

    def metrics_targets(self, track: str) -> list[str]:
        pods = self.api.get(
            f"/api/v1/namespaces/{self.namespace}/pods",
            params={"labelSelector": self._selector(track)},
        )
        targets = []
        for pod in pods.get("items", []):
            status = pod.get("status", {})
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
            if status.get("phase") == "Running" and ready and status.get("podIP"):
                targets.append(f"http://{status['podIP']}:8000/metrics")
        return targets

    def _selector(self, track: str) -> str:
        selector = f"app.kubernetes.io/name=ml-platform-serving,track={track}"
        return f"{selector},{MODEL_LABEL}={self.model}" if self.model else selector

    def router_view(self) -> None:
        return None

    def current_weight(self) -> int:
        if self.routing == "gateway-api":
            route = self.api.get(self.route_path)
            refs = route["spec"]["rules"][0]["backendRefs"]
            return int(next((r.get("weight", 0) for r in refs if r.get("name") == self.canary), 0))
        ingress = self.api.get(self.ingress_path)
        return int(ingress["metadata"].get("annotations", {}).get(CANARY_WEIGHT_ANNOTATION, "0"))

    def status(self) -> DeploymentStatus:
        stable = self.api.get(self.deployment_path(self.stable))
        canary = self.api.get(self.deployment_path(self.canary))
        return DeploymentStatus(
            backend=self.kind,
            model_name=self.model_name,
            model=self.model,
            public_url=self.public_url_or_none,
            stable_version=self._annotated_version(stable),
            canary_version=self._annotated_version(canary),
            canary_weight=self.current_weight(),
            detail={"namespace": self.namespace, "routing": self.routing},
        )

    def shutdown(self) -> None:
        raise DeploymentError("the kubernetes backend does not delete cluster objects; use kubectl delete -k")

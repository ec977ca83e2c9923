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

The API is reached through lightkube (:mod:`.kube_client`): kubeconfig or in-cluster
configuration, the service-account token re-read as it rotates, transient failures
(429, 5xx, connection errors) retried with backoff; a 409 on a patch is resolved here
by re-reading and re-sending. Waiting for a Deployment follows ``kubectl rollout
status`` (:func:`rollout_status`), and a ``ProgressDeadlineExceeded`` fails at once.
Rollout state lives in a ConfigMap per model (:mod:`.kube_rollout_state`).
Smoke tests go through ``public_url`` (the Gateway or Ingress host) with
``X-ML-Track: canary``, which the route pins to the canary.
There is no router log here: error rate and latency come from the metric
source only (use the ``prometheus`` metric source in a cluster).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from ml_platform.deployment.backend import DeploymentError, DeploymentStatus

if TYPE_CHECKING:
    from ml_platform.deployment.kube_rollout_state import ConfigMapRolloutStateStore

FIELD_MANAGER = "ml-platform-deployer"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
VERSION_ANNOTATION = "ml-platform/model-version"
CANARY_WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"
STABLE, CANARY, ROUTE = "serving-stable", "serving-canary", "serving"
CONTAINER = "serving"

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


# Checked before anything is sent (the same rules as the local backend's, deployment/local.py): a value that
# reaches a manifest is a registered name, a number, or an image reference, never free text.
REGISTERED_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,9}$")
IMAGE_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._:/-]{0,254})(@sha256:[a-f0-9]{64})?$")


def checked_version(version: object) -> str:
    """``version`` if it is a registry version number (what goes into ``MODEL_URI`` and the annotation)."""
    text = str(version)
    if not VERSION_PATTERN.match(text):
        raise DeploymentError(f"model version {version!r} is not a version number")
    return text


def checked_registered_name(name: object) -> str:
    if not isinstance(name, str) or not REGISTERED_NAME_PATTERN.match(name) or ".." in name:
        raise DeploymentError(f"registered model name {name!r}: use letters, digits, '.', '_' or '-' (no '..')")
    return name


def checked_image(image: object) -> str:
    if not isinstance(image, str) or not IMAGE_PATTERN.match(image):
        raise DeploymentError(f"canary image {image!r} is not an image reference (registry/name[:tag][@sha256:...])")
    return image


def canary_model_patch(
    model_name: str, version: str, *, image: str | None = None, replicas: int | None = None
) -> dict[str, Any]:
    """Strategic merge patch: the canary serves ``models:/<name>/<version>`` (pinned, never an alias)."""
    model_name, version = checked_registered_name(model_name), checked_version(version)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "env": [{"name": "MODEL_URI", "value": f"models:/{model_name}/{version}"}],
    }
    if image:
        container["image"] = checked_image(image)
    patch: dict[str, Any] = {
        "spec": {
            "template": {
                "metadata": {"annotations": {VERSION_ANNOTATION: str(version)}},
                "spec": {"containers": [container]},
            }
        }
    }
    if replicas is not None:
        if not 0 <= int(replicas) <= 1000:
            raise DeploymentError(f"canary replicas {replicas!r}: expected 0-1000")
        patch["spec"]["replicas"] = int(replicas)
    return patch


def stable_rollout_patch(version: str) -> dict[str, Any]:
    """Strategic merge patch: roll the stable pods so they resolve ``@champion`` again."""
    return {"spec": {"template": {"metadata": {"annotations": {VERSION_ANNOTATION: checked_version(version)}}}}}


def _check_weight(weight: int) -> int:
    value = int(weight)
    if not 0 <= value <= 100:
        raise ValueError(f"a canary weight is a percentage, got {weight}")
    return value


class RolloutFailed(DeploymentError):
    """A Deployment's rollout failed for good (``ProgressDeadlineExceeded``): waiting longer will not help."""


def rollout_status(deployment: dict[str, Any]) -> tuple[bool, str]:
    """``kubectl rollout status`` for a Deployment: ``(done, message)``.

    Done when the controller has observed the latest spec (``observedGeneration >=
    generation``), every replica runs the new template (``updatedReplicas >= spec.replicas``),
    no old replica is left (``status.replicas <= updatedReplicas``) and the updated ones are
    ready and available. A ``Progressing`` condition with reason ``ProgressDeadlineExceeded``
    (the Deployment's ``progressDeadlineSeconds`` passed) raises :class:`RolloutFailed`
    at once instead of waiting for the caller's timeout.
    """
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    name = meta.get("name", "?")
    if int(status.get("observedGeneration") or -1) < int(meta.get("generation") or 0):
        return False, "waiting for the deployment spec update to be observed"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            detail = condition.get("message") or "no progress within progressDeadlineSeconds"
            raise RolloutFailed(f"Deployment/{name} exceeded its progress deadline: {detail}")
    wanted = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < wanted:
        return False, f"{updated} of {wanted} new replicas have been updated"
    if total > updated:
        return False, f"{total - updated} old replicas are pending termination"
    if ready < updated:
        return False, f"{ready} of {updated} updated replicas are ready"
    if available < updated:
        return False, f"{available} of {updated} updated replicas are available"
    return True, f"successfully rolled out ({updated} replicas)"


def rollout_complete(deployment: dict[str, Any]) -> bool:
    """The Deployment's latest template is fully rolled out and available (raises :class:`RolloutFailed`
    past its progress deadline)."""
    return rollout_status(deployment)[0]


# -- the API client -------------------------------------------------------------------------


def _http_route() -> Any:
    from lightkube.generic_resource import create_namespaced_resource

    return create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")


def _resource(kind: str) -> Any:
    """The lightkube resource class of ``kind`` (typed models; HTTPRoute, a CRD, as a generic resource)."""
    if kind == "Deployment":
        from lightkube.resources.apps_v1 import Deployment

        return Deployment
    if kind == "Ingress":
        from lightkube.resources.networking_v1 import Ingress

        return Ingress
    if kind == "Pod":
        from lightkube.resources.core_v1 import Pod

        return Pod
    if kind == "ConfigMap":
        from lightkube.resources.core_v1 import ConfigMap

        return ConfigMap
    if kind == "HTTPRoute":
        return _http_route()
    raise ValueError(f"unknown kind {kind!r}")


def api_error_code(exc: BaseException) -> int | None:
    """The HTTP status of a failed API call, None for a connection-level failure."""
    import httpx2

    if isinstance(exc, httpx2.HTTPStatusError):
        return int(exc.response.status_code)
    return None


def _describe(exc: BaseException) -> str:
    import httpx2
    from lightkube import ApiError

    if isinstance(exc, ApiError):
        return f"{exc.status.code} {exc.status.reason or ''}: {exc.status.message or ''}".strip()
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"{exc.response.status_code} {exc.response.text[:300]}"
    return f"{type(exc).__name__}: {exc}"


class KubeApi:
    """The calls the backend makes, on a lightkube client, in one namespace.

    Transient failures are retried by the client's transport (:mod:`.kube_client`); a 409
    on a patch (the API server gave up merging against concurrent writes) is re-sent after
    a re-read, up to ``conflict_attempts`` times. Every failure surfaces as
    :class:`DeploymentError` naming the call.
    """

    def __init__(self, client: Any, namespace: str, *, conflict_attempts: int = 5) -> None:
        self.client = client
        self.namespace = namespace
        self.conflict_attempts = conflict_attempts

    @classmethod
    def connect(cls, settings: Any, namespace: str) -> KubeApi:
        from ml_platform.deployment.kube_client import connect

        return cls(connect(settings, field_manager=FIELD_MANAGER, namespace=namespace), namespace)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        import httpx2

        try:
            return fn()
        except (httpx2.HTTPError, OSError) as exc:
            raise DeploymentError(f"{what}: {_describe(exc)}") from exc

    def get(self, kind: str, name: str) -> dict[str, Any]:
        obj = self._call(f"GET {kind}/{name}", lambda: self.client.get(_resource(kind), name, namespace=self.namespace))
        return dict(obj.to_dict())

    def patch(self, kind: str, name: str, body: Any, patch_type: str) -> dict[str, Any]:
        """Patch ``kind/name``; a 409 conflict is resolved by re-reading the object and sending the patch again
        (the patches carry no resourceVersion: they are correct against whatever the object is now)."""
        import httpx2
        from lightkube.types import PatchType

        resource, ptype = _resource(kind), PatchType(patch_type)
        for attempt in range(1, self.conflict_attempts + 1):
            try:
                obj = self.client.patch(resource, name, body, namespace=self.namespace, patch_type=ptype)
                return dict(obj.to_dict())
            except (httpx2.HTTPError, OSError) as exc:
                if api_error_code(exc) == 409 and attempt < self.conflict_attempts:
                    self.get(kind, name)  # re-read: the conflict was with a concurrent write, now settled
                    time.sleep(0.05 * attempt)
                    continue
                raise DeploymentError(f"PATCH {kind}/{name} ({patch_type}): {_describe(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def list_pods(self, selector: str) -> list[dict[str, Any]]:
        from lightkube.resources.core_v1 import Pod

        def pods() -> list[dict[str, Any]]:
            return [
                dict(p.to_dict()) for p in self.client.list(Pod, namespace=self.namespace, labels=_labels(selector))
            ]

        return list(self._call(f"LIST pods {selector}", pods))


def _labels(selector: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in selector.split(",") if part)


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
        self._state_store: ConfigMapRolloutStateStore | None = None

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
        """``kubectl rollout status``: poll until done; a progress deadline exceeded fails at once."""
        deadline = time.monotonic() + timeout
        deployment = self.api.get("Deployment", name)
        done, message = rollout_status(deployment)
        while not done:
            if time.monotonic() >= deadline:
                raise DeploymentError(f"Deployment/{name} did not finish rolling out within {timeout:.0f}s: {message}")
            time.sleep(self.poll_seconds)
            deployment = self.api.get("Deployment", name)
            done, message = rollout_status(deployment)
        return deployment

    @staticmethod
    def _annotated_version(deployment: dict[str, Any]) -> str | None:
        annotations = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
        return annotations.get(VERSION_ANNOTATION)

    # -- the rollout steps ------------------------------------------------------------------

    def ensure_stable(self, champion_version: str, timeout: float) -> None:
        self.api.patch("Deployment", self.stable, stable_rollout_patch(champion_version), STRATEGIC_MERGE_PATCH)
        self._wait_rollout(self.stable, timeout)

    def start_canary(self, version: str, timeout: float) -> None:
        patch = canary_model_patch(self.model_name, version, image=self.canary_image, replicas=self.canary_replicas)
        self.set_canary_weight(0)
        self.api.patch("Deployment", self.canary, patch, STRATEGIC_MERGE_PATCH)
        self._wait_rollout(self.canary, timeout)

    def canary_health(self) -> tuple[bool, str]:
        try:
            deployment = self.api.get("Deployment", self.canary)
            done, _ = rollout_status(deployment)
        except DeploymentError as exc:  # unreachable, or past its progress deadline
            return False, str(exc)[:200]
        if not done:
            status, spec = deployment.get("status") or {}, deployment.get("spec") or {}
            return False, f"ready {status.get('readyReplicas') or 0}/{spec.get('replicas', 1)}"
        return True, f"ready, version {self._annotated_version(deployment)}"

    def set_canary_weight(self, weight: int) -> None:
        if self.routing == "gateway-api":
            self.api.patch("HTTPRoute", self.route, route_weight_patch(weight, self.stable, self.canary), JSON_PATCH)
        else:
            self.api.patch("Ingress", self.canary, ingress_weight_patch(weight), MERGE_PATCH)

    def serve_on_stable(self, version: str, timeout: float) -> None:
        self.api.patch("Deployment", self.stable, stable_rollout_patch(version), STRATEGIC_MERGE_PATCH)
        self._wait_rollout(self.stable, timeout)

    def retire_canary(self) -> None:
        self.set_canary_weight(0)
        if self.scale_down_canary:
            self.api.patch("Deployment", self.canary, {"spec": {"replicas": 0}}, STRATEGIC_MERGE_PATCH)

    # -- observation ------------------------------------------------------------------------

    def metrics_targets(self, track: str) -> list[str]:
        targets = []
        for pod in self.api.list_pods(self._selector(track)):
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
            route = self.api.get("HTTPRoute", self.route)
            refs = route["spec"]["rules"][0]["backendRefs"]
            return int(next((r.get("weight", 0) for r in refs if r.get("name") == self.canary), 0))
        ingress = self.api.get("Ingress", self.canary)
        return int((ingress["metadata"].get("annotations") or {}).get(CANARY_WEIGHT_ANNOTATION, "0"))

    def status(self) -> DeploymentStatus:
        stable = self.api.get("Deployment", self.stable)
        canary = self.api.get("Deployment", self.canary)
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

    def rollout_state_store(self) -> ConfigMapRolloutStateStore:
        """Where this model's rollout state lives: ``ConfigMap/<model>-rollout-state`` (one store per backend,
        so the resourceVersion it last saw carries over between calls)."""
        from ml_platform.deployment.kube_rollout_state import ConfigMapRolloutStateStore

        if self._state_store is None:
            self._state_store = ConfigMapRolloutStateStore(self.api)
        return self._state_store

    def shutdown(self) -> None:
        raise DeploymentError("the kubernetes backend does not delete cluster objects; use kubectl delete -k")

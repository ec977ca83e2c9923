"""The kubernetes deployer backend, against the real manifests of deploy/k8s but without a cluster.

What runs for real: `kubectl kustomize` renders both overlays; the backend
(lightkube, configured from a kubeconfig) drives a fake API server, a real HTTPS
server on 127.0.0.1 (kube_fake_api.py: no cluster can run here) that records
every request;
each recorded patch is then applied to the rendered object with
`kubectl patch --local` (the same JSON Patch / merge / strategic-merge
machinery the API server uses) and the result is validated against the
Kubernetes schemas (kubernetes-validate, strict) or, for the HTTPRoute CRD,
the Gateway API structure check of the deploy tests. The deployer Role is
checked to allow every request the backend makes.

Not exercised here (no cluster): API-server admission and field-ownership
conflicts, real rollout progress and readiness probes, traffic actually split
by a Gateway implementation or ingress-nginx, in-cluster Prometheus, the
service-account token and CA handling.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ml_platform.deployment.backend import DeploymentError
from ml_platform.deployment.kube_client import KubeSettings
from ml_platform.deployment.kubernetes import (
    FIELD_MANAGER,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    KubeApi,
    KubernetesBackend,
    rollout_complete,
)
from ml_platform_tests.deploy.helpers import KUSTOMIZATIONS, find, load_yaml_documents, require_binary, run
from ml_platform_tests.deploy.test_deploy_k8s_schema import validate_httproute
from ml_platform_tests.deployment.kube_fake_api import FakeKubeServer, Recorded, Reply

MODEL = "iris-random-forest"
KIND_BY_RESOURCE = {"deployments": "Deployment", "httproutes": "HTTPRoute", "ingresses": "Ingress"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = require_binary("kubectl")
    out = {}
    for overlay in ("gateway-api", "ingress-nginx"):
        result = run([kubectl, "kustomize", str(KUSTOMIZATIONS[overlay])])
        assert result.returncode == 0, result.stderr
        out[overlay] = load_yaml_documents(result.stdout)
    return out


class FakeApi:
    """Records requests; answers GETs with the rendered objects, reported fully rolled out."""

    def __init__(self, objects: list[dict[str, Any]], ready: bool = True) -> None:
        self.objects = objects
        self.ready = ready
        self.requests: list[tuple[str, str, str | None, str | None, Any]] = []

    def _object(self, path: str) -> dict[str, Any]:
        resource, name = path.rstrip("/").split("/")[-2:]
        obj = copy.deepcopy(find(self.objects, KIND_BY_RESOURCE[resource], name))
        if obj["kind"] == "Deployment":
            replicas = obj["spec"].get("replicas", 2)
            obj["spec"]["replicas"] = replicas
            obj["metadata"]["generation"] = 3
            ready = replicas if self.ready else 0
            obj["status"] = {
                "observedGeneration": 3,
                "updatedReplicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
            }
        return obj

    def handler(self, request: Recorded) -> Reply:
        self.requests.append(
            (
                request.method,
                request.path,
                request.content_type if request.method == "PATCH" else None,
                request.params.get("fieldManager"),
                request.body,
            )
        )
        if request.path.endswith("/pods"):
            return Reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []})
        return Reply(200, self._object(request.path))

    def patches(self) -> list[tuple[str, str, Any]]:
        return [(path, ctype or "", body) for method, path, ctype, _, body in self.requests if method == "PATCH"]


@pytest.fixture
def serve(tmp_path):
    """Start a fake API server answering with ``fake``'s handler; stopped after the test."""
    servers: list[FakeKubeServer] = []

    def start(fake: FakeApi) -> Path:
        server = FakeKubeServer(fake.handler, tmp_path).__enter__()
        servers.append(server)
        return server.kubeconfig(tmp_path / f"kubeconfig-{len(servers)}")

    yield start
    for server in servers:
        server.__exit__()


def backend_for(fake: FakeApi, routing: str, serve: Any) -> KubernetesBackend:
    api = KubeApi.connect(KubeSettings(kubeconfig=str(serve(fake))), "ml-serving")
    return KubernetesBackend(
        MODEL,
        api,
        routing=routing,
        public_url="https://serving.example",
        poll_seconds=0.01,  # type: ignore[arg-type]
    )


def kubectl_patch(obj: dict[str, Any], content_type: str, body: Any, tmp_path: Path) -> dict[str, Any]:
    kind = {JSON_PATCH: "json", MERGE_PATCH: "merge", STRATEGIC_MERGE_PATCH: "strategic"}[content_type]
    source = tmp_path / "object.yaml"
    source.write_text(yaml.safe_dump(obj))
    kubectl = require_binary("kubectl")
    result = run(
        [kubectl, "patch", "--local", "-f", str(source), f"--type={kind}", "-p", json.dumps(body), "-o", "json"]
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def apply_recorded(fake: FakeApi, objects: list[dict[str, Any]], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Apply every recorded patch, in order, to copies of the rendered objects."""
    state: dict[str, dict[str, Any]] = {}
    for path, content_type, body in fake.patches():
        resource, name = path.split("/")[-2:]
        key = f"{KIND_BY_RESOURCE[resource]}/{name}"
        current = state.get(key) or copy.deepcopy(find(objects, KIND_BY_RESOURCE[resource], name))
        state[key] = kubectl_patch(current, content_type, body, tmp_path)
    return state


def validate(obj: dict[str, Any]) -> None:
    if obj["kind"] == "HTTPRoute":
        validate_httproute(obj)
    else:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def run_rollout_steps(backend: KubernetesBackend) -> None:
    """What a promoted rollout sends: canary up at 0%, 25%, stable rolled to the version, canary retired."""
    backend.start_canary("7", timeout=5)
    assert backend.canary_health() == (True, "ready, version None")
    backend.set_canary_weight(25)
    backend.serve_on_stable("7", timeout=5)
    backend.retire_canary()


def test_gateway_api_rollout_sends_the_documented_patches(rendered, tmp_path, serve) -> None:
    fake = FakeApi(rendered["gateway-api"])
    run_rollout_steps(backend_for(fake, "gateway-api", serve))

    route_path = "/apis/gateway.networking.k8s.io/v1/namespaces/ml-serving/httproutes/serving"
    canary_path = "/apis/apps/v1/namespaces/ml-serving/deployments/serving-canary"
    stable_path = "/apis/apps/v1/namespaces/ml-serving/deployments/serving-stable"
    assert [(p, c) for p, c, _ in fake.patches()] == [
        (route_path, JSON_PATCH),
        (canary_path, STRATEGIC_MERGE_PATCH),
        (route_path, JSON_PATCH),
        (stable_path, STRATEGIC_MERGE_PATCH),
        (route_path, JSON_PATCH),
    ]
    assert {fm for method, _, _, fm, _ in fake.requests if method == "PATCH"} == {FIELD_MANAGER}

    # Step by step, the route's weights as the cluster would hold them.
    route = find(rendered["gateway-api"], "HTTPRoute", "serving")
    weights = []
    for path, content_type, body in fake.patches():
        if path == route_path:
            route = kubectl_patch(route, content_type, body, tmp_path)
            validate(route)
            weights.append({r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]})
    assert weights == [
        {"serving-stable": 100, "serving-canary": 0},
        {"serving-stable": 75, "serving-canary": 25},
        {"serving-stable": 100, "serving-canary": 0},
    ]
    assert route["spec"]["rules"][1] == find(rendered["gateway-api"], "HTTPRoute", "serving")["spec"]["rules"][1]

    final = apply_recorded(fake, rendered["gateway-api"], tmp_path)
    for obj in final.values():
        validate(obj)
    canary = final["Deployment/serving-canary"]
    container = canary["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MODEL_URI"]["value"] == f"models:/{MODEL}/7"
    assert "secretKeyRef" in env["ADMIN_API_TOKEN"]["valueFrom"]  # merged, not replaced
    assert canary["spec"]["template"]["metadata"]["annotations"]["ml-platform/model-version"] == "7"
    assert canary["spec"]["replicas"] == 1
    stable = final["Deployment/serving-stable"]
    assert stable["spec"]["template"]["metadata"]["annotations"]["ml-platform/model-version"] == "7"
    original = find(rendered["gateway-api"], "Deployment", "serving-stable")
    assert stable["spec"]["template"]["spec"] == original["spec"]["template"]["spec"]  # only the annotation moved


def test_a_route_whose_backends_moved_is_not_patched(rendered, tmp_path, serve) -> None:
    """The JSON Patch's `test` operations refuse a route that is not the one expected."""
    fake = FakeApi(rendered["gateway-api"])
    backend_for(fake, "gateway-api", serve).set_canary_weight(50)
    route = copy.deepcopy(find(rendered["gateway-api"], "HTTPRoute", "serving"))
    route["spec"]["rules"][0]["backendRefs"].reverse()
    (_, _, body) = fake.patches()[0]
    source = tmp_path / "route.yaml"
    source.write_text(yaml.safe_dump(route))
    result = run(
        [require_binary("kubectl"), "patch", "--local", "-f", str(source), "--type=json", "-p", json.dumps(body)]
    )
    assert result.returncode != 0 and "test" in result.stderr


def test_ingress_nginx_rollout_moves_the_canary_weight_annotation(rendered, tmp_path, serve) -> None:
    fake = FakeApi(rendered["ingress-nginx"])
    run_rollout_steps(backend_for(fake, "ingress-nginx", serve))
    ingress_path = "/apis/networking.k8s.io/v1/namespaces/ml-serving/ingresses/serving-canary"
    ingress = find(rendered["ingress-nginx"], "Ingress", "serving-canary")
    weights = []
    for path, content_type, body in fake.patches():
        if path == ingress_path:
            assert content_type == MERGE_PATCH
            ingress = kubectl_patch(ingress, content_type, body, tmp_path)
            validate(ingress)
            weights.append(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"])
    assert weights == ["0", "25", "0"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary"] == "true"
    for obj in apply_recorded(fake, rendered["ingress-nginx"], tmp_path).values():
        validate(obj)


def test_a_canary_that_never_becomes_ready_times_out(rendered, serve) -> None:
    fake = FakeApi(rendered["gateway-api"], ready=False)
    backend = backend_for(fake, "gateway-api", serve)
    with pytest.raises(DeploymentError, match="did not finish rolling out"):
        backend.start_canary("7", timeout=0.2)
    healthy, detail = backend.canary_health()
    assert not healthy and detail.startswith("ready 0/1")
    assert not rollout_complete({"metadata": {"generation": 4}, "status": {"observedGeneration": 3}})


def test_the_deployer_role_allows_every_request_the_backend_makes(rendered, serve) -> None:
    fake = FakeApi(rendered["gateway-api"])
    backend = backend_for(fake, "gateway-api", serve)
    run_rollout_steps(backend)
    backend.metrics_targets("canary")
    backend.status()
    role = find(rendered["gateway-api"], "Role", "ml-platform-deployer")
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for method, path, *_ in fake.requests:
        parts = path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        resource = parts[-1] if method == "GET" and parts[-1] == "pods" else parts[-2]
        verb = {"PATCH": "patch", "GET": "list" if resource == "pods" else "get"}[method]
        assert (group, resource, verb) in allowed, (method, path)

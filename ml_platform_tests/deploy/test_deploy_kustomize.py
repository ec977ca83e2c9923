"""What `kubectl kustomize` renders for the base and both routing overlays."""

from __future__ import annotations

from typing import Any

import pytest

from .helpers import find

SERVING = ["base", "gateway-api", "ingress-nginx"]
TRACKS = ("stable", "canary")
NAMESPACE = "ml-serving"


def serving_deployments(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [find(objects, "Deployment", f"serving-{track}") for track in TRACKS]


def all_deployments(rendered: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, o) for name, objects in rendered.items() for o in objects if o["kind"] == "Deployment"]


def configmap_env(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps, later ones winning."""
    env: dict[str, str] = {}
    for source in deployment["spec"]["template"]["spec"]["containers"][0].get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    return env


@pytest.mark.parametrize("name", SERVING)
def test_both_tracks_render_with_service_and_namespace(rendered, name):
    objects = rendered[name]
    for track in TRACKS:
        deployment = find(objects, "Deployment", f"serving-{track}")
        service = find(objects, "Service", f"serving-{track}")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["track"] == track
        assert deployment["spec"]["selector"]["matchLabels"]["track"] == track
        # The Service selects exactly this track's pods.
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["selector"]["track"] == track
        assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert (
        find(objects, "Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "restricted"
    )
    namespaced = [o for o in objects if o["kind"] not in {"Namespace"}]
    assert {o["metadata"].get("namespace") for o in namespaced} == {NAMESPACE}


@pytest.mark.parametrize("name", [*SERVING, "mlflow"])
def test_every_object_has_the_recommended_labels(rendered, name):
    for obj in rendered[name]:
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "ml-platform", where
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize", where
        if obj["kind"] not in {"ConfigMap"}:
            assert "app.kubernetes.io/name" in labels, where


def test_configmaps_set_model_uri_track_and_in_cluster_mlflow(rendered):
    objects = rendered["base"]
    stable, canary = serving_deployments(objects)
    stable_env, canary_env = configmap_env(objects, stable), configmap_env(objects, canary)
    assert stable_env["TRACK"] == "stable"
    assert canary_env["TRACK"] == "canary"
    assert stable_env["MODEL_URI"] == "models:/iris-random-forest@champion"
    # The canary is pinned to a version number, never an alias.
    assert canary_env["MODEL_URI"].startswith("models:/iris-random-forest/")
    assert canary_env["MODEL_URI"].rsplit("/", 1)[1].isdigit()
    for env in (stable_env, canary_env):
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlops.svc:5000"
        assert env["HOST"] == "0.0.0.0"
        assert env["PORT"] == "8000"
        assert env["ML_PLATFORM_HOME"] == "/var/lib/ml_platform"
        assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def test_admin_token_is_an_optional_secret_reference_and_no_secret_is_rendered(rendered):
    for name in SERVING:
        objects = rendered[name]
        assert not [o for o in objects if o["kind"] == "Secret"], "no Secret may be shipped in the manifests"
        for deployment in serving_deployments(objects):
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            (token,) = [e for e in container["env"] if e["name"] == "ADMIN_API_TOKEN"]
            assert "value" not in token
            ref = token["valueFrom"]["secretKeyRef"]
            assert ref["optional"] is True
            assert ref["name"] and ref["key"]


def test_feedback_signing_key_is_one_required_secret_reference_for_both_tracks(rendered):
    """Receipts signed by one pod must verify on every pod of the deployment: one Secret, and no pod without it."""
    for name in SERVING:
        refs = []
        for deployment in serving_deployments(rendered[name]):
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            (key,) = [e for e in container["env"] if e["name"] == "FEEDBACK_SIGNING_KEY"]
            assert "value" not in key
            refs.append(key["valueFrom"]["secretKeyRef"])
        assert refs[0] == refs[1] == {"name": "serving-feedback-key", "key": "key", "optional": False}


@pytest.mark.parametrize("name", [*SERVING, "mlflow"])
def test_every_pod_is_hardened(rendered, name):
    deployments = [o for o in rendered[name] if o["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        where = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["serviceAccountName"] not in ("", "default"), where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] == 10001, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        mounted = set()
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert container["imagePullPolicy"] == "Always", where
            # Pinned by digest (kustomize `images:`), never a floating tag.
            assert "@sha256:" in container["image"], where
            for key in ("cpu", "memory"):
                assert key in container["resources"]["requests"], where
                assert key in container["resources"]["limits"], where
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["path"] == "/health", (where, probe)
            mounted |= {m["mountPath"] for m in container.get("volumeMounts", [])}
        # Every writable path is an emptyDir with a size limit.
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert "/tmp" in mounted, where
        for volume in volumes.values():
            assert volume["emptyDir"]["sizeLimit"], where


def test_serving_pods_probe_port_8000_and_mount_their_writable_dirs(rendered):
    for deployment in serving_deployments(rendered["base"]):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
        assert {m["mountPath"] for m in container["volumeMounts"]} == {
            "/tmp",
            "/tmp/prometheus-multiproc",
            "/var/lib/ml_platform",
        }
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "8000"
        assert annotations["prometheus.io/path"] == "/metrics"


def test_stable_and_canary_pods_differ_only_by_track(rendered):
    stable, canary = serving_deployments(rendered["base"])

    def normalised(deployment: dict[str, Any], track: str) -> str:
        pod = deployment["spec"]["template"]
        text = repr(pod)
        # Generated ConfigMap names end in a content hash: drop it.
        for env in pod["spec"]["containers"][0]["envFrom"]:
            name = env["configMapRef"]["name"]
            text = text.replace(name, name.rsplit("-", 1)[0])
        return text.replace(f"serving-{track}", "serving-TRACK").replace(f"'{track}'", "'TRACK'")

    assert normalised(stable, "stable") == normalised(canary, "canary")


def test_stable_autoscales_and_has_a_disruption_budget(rendered):
    objects = rendered["base"]
    stable = find(objects, "Deployment", "serving-stable")
    assert "replicas" not in stable["spec"], "the HPA owns the replica count"
    hpa = find(objects, "HorizontalPodAutoscaler", "serving-stable")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serving-stable"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = find(objects, "PodDisruptionBudget", "serving-stable")
    assert pdb["spec"]["selector"]["matchLabels"] == stable["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert find(objects, "Deployment", "serving-canary")["spec"]["replicas"] == 1
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler" and "canary" in o["metadata"]["name"]]


def _peer_namespaces(rules: list[dict[str, Any]], key: str) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for rule in rules:
        ports = {p["port"] for p in rule.get("ports", [])}
        for peer in rule.get(key, []):
            ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            out.setdefault(ns, set()).update(ports)
    return out


def test_network_policy_admits_prometheus_and_dagster_and_reaches_only_mlflow_and_dns(rendered):
    policy = find(rendered["base"], "NetworkPolicy", "serving")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "ml-platform-serving"}
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert _peer_namespaces(spec["ingress"], "from") == {"monitoring": {8000}, "dagster": {8000}}
    assert _peer_namespaces(spec["egress"], "to") == {"mlops": {5000}, "kube-system": {53}}
    # Every egress rule names its peers: no rule opens a port to the world.
    assert all(rule.get("to") for rule in spec["egress"])


@pytest.mark.parametrize(
    ("name", "policy", "namespace"),
    [
        ("gateway-api", "serving-from-gateway", "gateway-system"),
        ("ingress-nginx", "serving-from-ingress-nginx", "ingress-nginx"),
    ],
)
def test_each_overlay_admits_only_its_router(rendered, name, policy, namespace):
    objects = rendered[name]
    spec = find(objects, "NetworkPolicy", policy)["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert _peer_namespaces(spec["ingress"], "from") == {namespace: {8000}}
    other = {"gateway-api": "serving-from-ingress-nginx", "ingress-nginx": "serving-from-gateway"}[name]
    assert not [o for o in objects if o["metadata"]["name"] == other]


def test_httproute_splits_100_0_between_the_track_services(rendered):
    objects = rendered["gateway-api"]
    route = find(objects, "HTTPRoute", "serving")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    weighted = route["spec"]["rules"][0]
    refs = {ref["name"]: ref for ref in weighted["backendRefs"]}
    assert set(refs) == {"serving-stable", "serving-canary"}
    assert refs["serving-stable"]["weight"] == 100
    assert refs["serving-canary"]["weight"] == 0
    assert sum(ref["weight"] for ref in refs.values()) == 100
    for ref in refs.values():
        service = find(objects, "Service", ref["name"])
        assert ref["port"] in {p["port"] for p in service["spec"]["ports"]}
    # Only the public API is routed.
    paths = {m["path"]["value"] for m in weighted["matches"]}
    assert paths == {"/predict", "/feedback"}
    assert not [o for o in objects if o["kind"] == "Ingress"]


def test_httproute_pins_the_canary_header_to_the_canary(rendered):
    route = find(rendered["gateway-api"], "HTTPRoute", "serving")
    pinned = route["spec"]["rules"][1]
    assert [ref["name"] for ref in pinned["backendRefs"]] == ["serving-canary"]
    for match in pinned["matches"]:
        assert match["headers"] == [{"type": "Exact", "name": "X-ML-Track", "value": "canary"}]


def test_ingress_nginx_has_main_and_canary_ingress_on_the_same_host_and_paths(rendered):
    objects = rendered["ingress-nginx"]
    main = find(objects, "Ingress", "serving")
    canary = find(objects, "Ingress", "serving-canary")
    annotations = canary["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    assert annotations["nginx.ingress.kubernetes.io/canary-weight"] == "0"
    assert annotations["nginx.ingress.kubernetes.io/canary-by-header"] == "X-ML-Track"
    assert "nginx.ingress.kubernetes.io/canary" not in main["metadata"].get("annotations", {})

    def routes(ingress: dict[str, Any]) -> set[tuple[str, str, str]]:
        return {
            (rule["host"], path["path"], path["pathType"])
            for rule in ingress["spec"]["rules"]
            for path in rule["http"]["paths"]
        }

    def backends(ingress: dict[str, Any]) -> set[str]:
        return {p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}

    # ingress-nginx pairs a canary with the main Ingress by host and path.
    assert routes(main) == routes(canary)
    assert backends(main) == {"serving-stable"}
    assert backends(canary) == {"serving-canary"}
    assert main["spec"]["ingressClassName"] == canary["spec"]["ingressClassName"] == "nginx"
    assert main["spec"]["tls"][0]["hosts"] == [rule["host"] for rule in main["spec"]["rules"]]
    assert not [o for o in objects if o["kind"] == "HTTPRoute"]


def test_deployer_role_can_patch_the_traffic_split_and_nothing_dangerous(rendered):
    objects = rendered["base"]
    role = find(objects, "Role", "ml-platform-deployer")
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    for key in [
        ("apps", "deployments"),
        ("networking.k8s.io", "ingresses"),
        ("gateway.networking.k8s.io", "httproutes"),
    ]:
        assert "patch" in granted[key], key
    everything = [verb for verbs in granted.values() for verb in verbs] + [r for _, r in granted]
    for forbidden in ("*", "delete", "deletecollection", "escalate", "bind", "impersonate", "secrets"):
        assert forbidden not in everything
    # The one thing it creates: its rollout-state ConfigMaps (kube_rollout_state.py); nothing else.
    assert {key for key, verbs in granted.items() if "create" in verbs} == {("", "configmaps")}
    assert granted[("", "configmaps")] == {"get", "create", "update"}
    binding = find(objects, "RoleBinding", "ml-platform-deployer")
    assert binding["roleRef"]["name"] == "ml-platform-deployer"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dagster", "namespace": "dagster"}]


def test_mlflow_server_reads_stores_from_environment_and_accepts_the_client_host(rendered):
    objects = rendered["mlflow"]
    deployment = find(objects, "Deployment", "mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    (uri,) = [e for e in container["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI"]
    assert uri["valueFrom"]["secretKeyRef"]["name"] == "mlflow-backend-store"
    env = configmap_env(objects, deployment)
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    # The host the serving pods and Dagster use passes MLflow's Host check,
    # and names this Service, in this namespace, on this port.
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "mlflow.mlops.svc:5000" in allowed
    service = find(objects, "Service", "mlflow")
    assert service["metadata"]["namespace"] == "mlops"
    assert service["spec"]["ports"][0]["port"] == 5000
    assert container["args"] == ["--host", "0.0.0.0", "--port", "5000"]
    assert find(objects, "PodDisruptionBudget", "mlflow")["spec"]["maxUnavailable"] == 1

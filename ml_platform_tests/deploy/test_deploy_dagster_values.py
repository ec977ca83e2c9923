"""values.yaml for the Dagster Helm chart, and how it fits the manifests.

Helm is not needed: the chart's value names are checked against the ones its
values.schema.json defines (for the keys used here), and the Kubernetes parts
(security contexts, volumes, resources) are validated as a Pod.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import yaml

from .helpers import K8S, find

VALUES = yaml.safe_load((K8S / "dagster" / "values.yaml").read_text())

# Key names from the chart's values.schema.json (dagster/dagster 1.x), for the
# sections this file sets. A typo here is silently ignored by Helm.
CHART_KEYS = {
    "": {
        "global",
        "serviceAccount",
        "generatePostgresqlPasswordSecret",
        "postgresql",
        "telemetry",
        "dagsterWebserver",
        "dagsterDaemon",
        "dagster-user-deployments",
        "runLauncher",
    },
    "global": {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName"},
    "serviceAccount": {"create", "name", "annotations"},
    "postgresql": {
        "image",
        "enabled",
        "postgresqlHost",
        "postgresqlUsername",
        "postgresqlPassword",
        "postgresqlDatabase",
        "postgresqlParams",
        "postgresqlScheme",
        "service",
    },
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "deployment": {
        "name",
        "image",
        "dagsterApiGrpcArgs",
        "codeServerArgs",
        "includeConfigInLaunchedRuns",
        "deploymentNamespace",
        "port",
        "env",
        "envConfigMaps",
        "envSecrets",
        "annotations",
        "nodeSelector",
        "affinity",
        "tolerations",
        "podSecurityContext",
        "securityContext",
        "resources",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "labels",
        "volumeMounts",
        "volumes",
        "schedulerName",
        "initContainers",
        "sidecarContainers",
    },
    "k8sRunLauncher": {
        "image",
        "imagePullPolicy",
        "jobNamespace",
        "loadInclusterConfig",
        "kubeconfigFile",
        "envConfigMaps",
        "envSecrets",
        "envVars",
        "volumeMounts",
        "volumes",
        "labels",
        "failPodOnRunFailure",
        "resources",
        "schedulerName",
        "securityContext",
        "runK8sConfig",
    },
    "runK8sConfig": {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata"},
}


def code_location() -> dict[str, Any]:
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    return deployment


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in deployment["env"]}


def test_values_use_only_chart_keys():
    assert set(VALUES) <= CHART_KEYS[""]
    for section in ("global", "serviceAccount", "postgresql", "dagster-user-deployments"):
        assert set(VALUES[section]) <= CHART_KEYS[section], section
    assert set(code_location()) <= CHART_KEYS["deployment"]
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    assert set(launcher) <= CHART_KEYS["k8sRunLauncher"]
    assert set(launcher["runK8sConfig"]) <= CHART_KEYS["runK8sConfig"]
    # Required by the chart's schema when the K8sRunLauncher is configured.
    assert {
        "imagePullPolicy",
        "loadInclusterConfig",
        "envConfigMaps",
        "envSecrets",
        "envVars",
        "volumeMounts",
        "volumes",
    } <= set(launcher)


def test_code_location_runs_ml_platform_on_port_4000():
    deployment = code_location()
    assert VALUES["dagster-user-deployments"]["enabled"] is True
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "ml_platform"]
    assert deployment["port"] == 4000
    assert deployment["image"]["repository"].endswith("/ml-platform-dagster")
    assert deployment["image"]["tag"] not in ("", "latest")
    assert deployment["image"]["pullPolicy"] == "Always"
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"


def test_environment_points_at_mlflow_and_object_storage(rendered):
    env = env_of(code_location())
    # The platform home is a mounted (shared) volume; snapshots live in object storage.
    assert env["ML_PLATFORM_HOME"].startswith("/")
    assert urlsplit(env["REFERENCE_DATASET_URI"]).scheme == "s3"
    # The same MLflow the serving pods use, which that Service really is.
    serving_env = find(
        rendered["base"],
        "ConfigMap",
        next(
            o["metadata"]["name"]
            for o in rendered["base"]
            if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("serving-common-env")
        ),
    )["data"]
    assert env["MLFLOW_TRACKING_URI"] == serving_env["MLFLOW_TRACKING_URI"]
    url = urlsplit(env["MLFLOW_TRACKING_URI"])
    assert url.hostname
    service_name, namespace, *_ = url.hostname.split(".")
    service = find(rendered["mlflow"], "Service", service_name)
    assert namespace == service["metadata"]["namespace"]
    assert url.port == service["spec"]["ports"][0]["port"]


def test_postgres_is_external_and_its_password_comes_from_a_secret():
    assert VALUES["postgresql"]["enabled"] is False
    assert VALUES["postgresql"]["postgresqlHost"]
    assert VALUES["generatePostgresqlPasswordSecret"] is False
    assert VALUES["global"]["postgresqlSecretName"]
    assert not VALUES["postgresql"].get("postgresqlPassword")
    text = (K8S / "dagster" / "values.yaml").read_text().lower()
    assert "password:" not in text.replace("postgresql-password", "")


def test_pod_settings_are_valid_kubernetes():
    deployment = code_location()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "code-location", "labels": deployment["labels"]},
        "spec": {
            "securityContext": deployment["podSecurityContext"],
            "volumes": deployment["volumes"],
            "containers": [
                {
                    "name": "dagster",
                    "image": "example",
                    "env": deployment["env"],
                    "securityContext": deployment["securityContext"],
                    "resources": deployment["resources"],
                    "volumeMounts": deployment["volumeMounts"],
                }
            ],
        },
    }
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    run_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "run", "labels": launcher["labels"]},
        "spec": {
            **launcher["runK8sConfig"]["podSpecConfig"],
            "containers": [{"name": "run", "image": "example", "resources": launcher["resources"]}],
        },
    }
    kubernetes_validate.validate(run_pod, kubernetes_validate.latest_version(), strict=True)
    sc = deployment["securityContext"]
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert {m["mountPath"] for m in deployment["volumeMounts"]} >= {"/tmp", "/opt/dagster/dagster_home/storage"}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_network_policies_and_rbac_admit_the_dagster_pods(rendered):
    """The labels and service account set here are the ones the manifests expect."""
    code_labels = code_location()["labels"]
    run_labels = VALUES["runLauncher"]["config"]["k8sRunLauncher"]["labels"]
    serving_policy = find(rendered["base"], "NetworkPolicy", "serving")
    mlflow_policy = find(rendered["mlflow"], "NetworkPolicy", "mlflow")
    for policy in (serving_policy, mlflow_policy):
        peers = [
            peer
            for rule in policy["spec"]["ingress"]
            for peer in rule["from"]
            if peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "dagster"}
        ]
        assert peers, policy["metadata"]["name"]
        for peer in peers:
            assert _selects(peer["podSelector"]["matchLabels"], run_labels)
            assert _selects(peer["podSelector"]["matchLabels"], code_labels)
    binding = find(rendered["base"], "RoleBinding", "ml-platform-deployer")
    assert binding["subjects"][0]["name"] == VALUES["global"]["serviceAccountName"] == VALUES["serviceAccount"]["name"]
    # The deployer patches through the API: run pods need their token.
    assert (
        VALUES["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"][
            "automountServiceAccountToken"
        ]
        is True
    )

"""The patches documented in deploy/k8s/README.md do what it says.

They are what the Kubernetes deployer backend sends. Each is applied to the
rendered object with `kubectl patch --local` (no cluster: the same patch
machinery, JSON Patch, JSON merge patch and strategic merge, run client-side).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .helpers import K8S, find, require_binary, run

README = (K8S / "README.md").read_text()
BLOCKS = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", README, flags=re.S)]


def block(predicate) -> Any:
    (found,) = [b for b in BLOCKS if predicate(json.dumps(b))]
    return found


ROUTE_PATCH = block(lambda text: text.startswith("[") and "backendRefs" in text)
INGRESS_PATCH = block(lambda text: "canary-weight" in text)
CANARY_PATCH = block(lambda text: "MODEL_URI" in text)
# Promotion: the inline strategic merge patch that rolls the stable pods.
_INLINE = re.search(r"`(\{\"spec\": \{\"template\": \{\"metadata\".*?\}\}\}\}\})`", README)
assert _INLINE, "the promotion patch is missing from the README"
STABLE_PATCH = json.loads(_INLINE[1])


def kubectl_patch(obj: dict[str, Any], kind: str, body: Any, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    kubectl = require_binary("kubectl")
    source = tmp_path / "object.yaml"
    source.write_text(yaml.safe_dump(obj))
    args = ["patch", "--local", "-f", str(source), f"--type={kind}", "-p", json.dumps(body), "-o", "json"]
    return run([kubectl, *args])


def patch(obj: dict[str, Any], kind: str, body: Any, tmp_path: Path) -> dict[str, Any]:
    """The object as the API server would store it after the patch."""
    result = kubectl_patch(obj, kind, body, tmp_path)
    assert result.returncode == 0, result.stderr
    patched: dict[str, Any] = json.loads(result.stdout)
    return patched


def weights(route: dict[str, Any]) -> dict[str, int]:
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def test_route_patch_moves_the_canary_weight_and_nothing_else(rendered, tmp_path):
    route = find(rendered["gateway-api"], "HTTPRoute", "serving")
    patched = patch(route, "json", ROUTE_PATCH, tmp_path)
    assert weights(route) == {"serving-stable": 100, "serving-canary": 0}
    assert weights(patched) == {"serving-stable": 75, "serving-canary": 25}
    assert sum(weights(patched).values()) == 100
    before, after = copy.deepcopy(route), copy.deepcopy(patched)
    for obj in (before, after):
        for ref in obj["spec"]["rules"][0]["backendRefs"]:
            ref.pop("weight")
    assert before["spec"] == after["spec"]


def test_route_patch_refuses_a_route_whose_backends_moved(rendered, tmp_path):
    """The `test` operations: if the list is not as expected, nothing changes."""
    route = copy.deepcopy(find(rendered["gateway-api"], "HTTPRoute", "serving"))
    route["spec"]["rules"][0]["backendRefs"].reverse()
    result = kubectl_patch(route, "json", ROUTE_PATCH, tmp_path)
    assert result.returncode != 0
    assert "test" in result.stderr


def test_ingress_patch_sets_the_canary_weight_annotation(rendered, tmp_path):
    ingress = find(rendered["ingress-nginx"], "Ingress", "serving-canary")
    patched = patch(ingress, "merge", INGRESS_PATCH, tmp_path)
    annotations = patched["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/canary-weight"] == "25"
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    assert patched["spec"] == ingress["spec"]
    kubernetes_validate.validate(patched, kubernetes_validate.latest_version(), strict=True)


def test_canary_patch_changes_the_model_and_keeps_everything_else(rendered, tmp_path):
    deployment = find(rendered["base"], "Deployment", "serving-canary")
    patched = patch(deployment, "strategic", CANARY_PATCH, tmp_path)
    (container,) = patched["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MODEL_URI"]["value"] == "models:/iris-random-forest/7"
    # Merged, not replaced: the secret reference and ConfigMaps stay.
    for secret in ("ADMIN_API_TOKEN", "FEEDBACK_SIGNING_KEY"):
        assert env[secret] == next(
            e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == secret
        )
    assert container["envFrom"] == deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert container["securityContext"] == deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert patched["spec"]["template"]["metadata"]["annotations"]["ml-platform/model-version"] == "7"
    kubernetes_validate.validate(patched, kubernetes_validate.latest_version(), strict=True)


def test_canary_patch_can_also_change_the_image(rendered, tmp_path):
    deployment = find(rendered["base"], "Deployment", "serving-canary")
    body = copy.deepcopy(CANARY_PATCH)
    image = "ghcr.io/example-org/ml-platform-serving@sha256:" + "1" * 64
    body["spec"]["template"]["spec"]["containers"][0]["image"] = image
    patched = patch(deployment, "strategic", body, tmp_path)
    assert patched["spec"]["template"]["spec"]["containers"][0]["image"] == image


@pytest.mark.parametrize("name", ["serving-stable", "serving-canary"])
def test_promotion_patch_rolls_the_pods_and_nothing_else(rendered, tmp_path, name):
    deployment = find(rendered["base"], "Deployment", name)
    patched = patch(deployment, "strategic", STABLE_PATCH, tmp_path)
    template = patched["spec"]["template"]
    assert template["metadata"]["annotations"]["ml-platform/model-version"] == "7"
    assert template["spec"] == deployment["spec"]["template"]["spec"]

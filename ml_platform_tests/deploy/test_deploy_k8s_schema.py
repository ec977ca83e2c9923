"""Every rendered object is valid Kubernetes.

Built-in kinds are checked with kubernetes-validate (strict: unknown fields
fail) against the oldest and the newest API version we support. HTTPRoute is a
CRD (Gateway API) that kubernetes-validate has no schema for; its structure is
checked below against the Gateway API v1 fields this repository uses.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from .helpers import find

# Oldest: HPA autoscaling/v2, PDB policy/v1, seccompProfile and
# NetworkPolicy's kubernetes.io/metadata.name label are all GA well before it.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
NOT_IN_KUBERNETES_VALIDATE = {("gateway.networking.k8s.io/v1", "HTTPRoute")}


def test_every_builtin_object_validates_strictly(rendered):
    checked = 0
    unknown = set()
    for name, objects in rendered.items():
        for obj in objects:
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    unknown.add((obj["apiVersion"], obj["kind"]))
                except kubernetes_validate.ValidationError as error:
                    pytest.fail(
                        f"{name}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {error.message}"
                    )
            checked += 1
    # Nothing is silently unvalidated: only the CRD lacks a schema here, and
    # it has its own check below.
    assert unknown == NOT_IN_KUBERNETES_VALIDATE
    # All four renderings, with the base counted in each overlay.
    assert checked >= 50


# --- HTTPRoute (gateway.networking.k8s.io/v1), checked by hand ---------------

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}


def _keys(obj: dict[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    assert isinstance(obj, dict), where
    assert set(obj) <= allowed, f"{where}: unknown fields {set(obj) - allowed}"
    assert required <= set(obj), f"{where}: missing {required - set(obj)}"


def validate_httproute(route: dict[str, Any]) -> None:
    """The v1 HTTPRoute schema, for the fields an HTTPRoute here may use."""
    _keys(route, {"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"}, "route")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert DNS_LABEL.match(route["metadata"]["name"])
    spec = route["spec"]
    _keys(spec, {"parentRefs", "hostnames", "rules"}, {"parentRefs", "rules"}, "spec")
    assert 1 <= len(spec["parentRefs"]) <= 32
    for ref in spec["parentRefs"]:
        _keys(ref, {"group", "kind", "namespace", "name", "sectionName", "port"}, {"name"}, "parentRef")
        assert ref.get("group", "gateway.networking.k8s.io") == "gateway.networking.k8s.io"
        assert ref.get("kind", "Gateway") == "Gateway"
    for hostname in spec.get("hostnames", []):
        assert HOSTNAME.match(hostname) and len(hostname) <= 253, hostname
    assert 1 <= len(spec["rules"]) <= 16
    for i, rule in enumerate(spec["rules"]):
        where = f"rules[{i}]"
        _keys(rule, {"name", "matches", "filters", "backendRefs", "timeouts"}, {"backendRefs"}, where)
        assert 1 <= len(rule.get("matches", [{}])) <= 64, where
        for match in rule.get("matches", []):
            _keys(match, {"path", "headers", "queryParams", "method"}, set(), where)
            if "path" in match:
                _keys(match["path"], {"type", "value"}, {"type", "value"}, where)
                assert match["path"]["type"] in {"Exact", "PathPrefix", "RegularExpression"}, where
                assert match["path"]["value"].startswith("/"), where
            assert match.get("method", "GET") in METHODS, where
            for header in match.get("headers", []):
                _keys(header, {"type", "name", "value"}, {"name", "value"}, where)
                assert header.get("type", "Exact") in {"Exact", "RegularExpression"}, where
                assert HEADER_NAME.match(header["name"]), where
        for ref in rule["backendRefs"]:
            _keys(ref, {"group", "kind", "name", "namespace", "port", "weight", "filters"}, {"name"}, where)
            assert ref.get("group", "") == "" and ref.get("kind", "Service") == "Service", where
            # A Service backend needs a port; weight is 0..1,000,000.
            assert isinstance(ref.get("port"), int) and 1 <= ref["port"] <= 65535, where
            weight = ref.get("weight", 1)
            assert isinstance(weight, int) and 0 <= weight <= 1_000_000, where


def test_httproute_is_structurally_valid_and_targets_existing_services(rendered):
    objects = rendered["gateway-api"]
    route = find(objects, "HTTPRoute", "serving")
    validate_httproute(route)
    for rule in route["spec"]["rules"]:
        for ref in rule["backendRefs"]:
            service = find(objects, "Service", ref["name"])
            assert ref["port"] in [p["port"] for p in service["spec"]["ports"]]


@pytest.mark.parametrize(
    "mutation",
    [
        lambda r: r["spec"]["rules"][0]["backendRefs"][0].update(weight=-1),
        lambda r: r["spec"]["rules"][0]["backendRefs"][0].pop("port"),
        lambda r: r["spec"]["rules"][0]["matches"][0]["path"].update(type="Prefix"),
        lambda r: r["spec"].update(backends=[]),
        lambda r: r.update(apiVersion="gateway.networking.k8s.io/v1beta2"),
    ],
    ids=["negative-weight", "no-port", "bad-path-type", "unknown-field", "old-version"],
)
def test_the_httproute_check_rejects_broken_routes(rendered, mutation):
    """The hand-written check is not vacuous: each of these breaks it."""
    import copy

    route = copy.deepcopy(find(rendered["gateway-api"], "HTTPRoute", "serving"))
    mutation(route)
    with pytest.raises(AssertionError):
        validate_httproute(route)

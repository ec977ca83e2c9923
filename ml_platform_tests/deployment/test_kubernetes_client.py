"""The Kubernetes API client of the deployer (lightkube + deployment/kube_client.py), against a fake API server.

No Kubernetes cluster can run here, so the API server is replaced by
kube_fake_api.FakeKubeServer: a real HTTPS server on 127.0.0.1 (self-signed
certificate trusted through the kubeconfig) answering the subset of the API the
deployer calls, with the API server's resourceVersion/409 rules. Everything on the
client side is real: kubeconfig parsing, TLS verification, the bearer-token file,
retries and their waits, the HTTP requests on the wire.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from ml_platform.deployment.backend import DeploymentError
from ml_platform.deployment.kube_client import KubeSettings, RetryPolicy, connect, load_config
from ml_platform.deployment.kubernetes import FIELD_MANAGER, KubeApi
from ml_platform_tests.deployment.kube_fake_api import FakeKubeServer, ObjectStore, Reply, status_reply

NS = "ml-serving"
FAST = RetryPolicy(attempts=4, base_seconds=0.01, cap_seconds=0.05)


def deployment(name: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": "x"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {}}},
    }


@pytest.fixture
def store() -> ObjectStore:
    objects = ObjectStore()
    objects.put_object("deployments", NS, deployment("serving-canary"))
    return objects


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-1\n")
    return path


@pytest.fixture
def server(store: ObjectStore, tmp_path: Path):
    with FakeKubeServer(store, tmp_path, tokens={"token-1"}) as running:
        yield running


def api_for(server: FakeKubeServer, tmp_path: Path, token_file: Path, retry: RetryPolicy = FAST) -> KubeApi:
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", token_file=token_file)
    return KubeApi(connect(KubeSettings(kubeconfig=str(kubeconfig), retry=retry), field_manager=FIELD_MANAGER), NS)


# -- configuration ---------------------------------------------------------------------------


def test_a_kubeconfig_is_loaded_from_kubeconfig_with_its_context_and_ca(server, tmp_path, token_file) -> None:
    good = server.kubeconfig(tmp_path / "good", token_file=token_file)
    other = tmp_path / "other"
    other.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: broken\n"
        "clusters: [{name: broken, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: nobody, user: {}}]\n"
        "contexts: [{name: broken, context: {cluster: broken, user: nobody}}]\n"
    )
    # KUBECONFIG lists two files: merged like kubectl, the first file's current-context wins...
    env = {"KUBECONFIG": f"{good}{os.pathsep}{other}"}
    config = load_config(KubeSettings(env=env))
    assert (config.context_name, config.cluster.server, config.namespace) == ("fake", server.url, NS)
    # ... and an explicit context picks the other file's entry.
    assert load_config(KubeSettings(env=env, context="broken")).cluster.server == "https://127.0.0.1:1"

    api = KubeApi(connect(KubeSettings(env=env), field_manager=FIELD_MANAGER), NS)
    assert api.get("Deployment", "serving-canary")["metadata"]["name"] == "serving-canary"  # TLS verified by the CA
    assert server.requests[-1].token == "token-1"

    with pytest.raises(DeploymentError, match="Context 'nope' not found"):
        load_config(KubeSettings(env=env, context="nope"))
    with pytest.raises(DeploymentError, match="kubeconfig not found"):
        load_config(KubeSettings(kubeconfig=str(tmp_path / "missing")))


def test_in_cluster_configuration_uses_the_service_account(server, tmp_path) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("token-1")
    (sa / "namespace").write_text(NS)
    (sa / "ca.crt").write_bytes(server.cert.read_bytes())
    port = server.url.rsplit(":", 1)[1]
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    settings = KubeSettings(env=env, service_account_dir=str(sa))
    config = load_config(settings)
    assert (config.cluster.server, config.namespace) == (server.url, NS)
    client = connect(settings, field_manager=FIELD_MANAGER)
    assert KubeApi(client, client.namespace).get("Deployment", "serving-canary")["kind"] == "Deployment"

    with pytest.raises(DeploymentError, match="no Kubernetes configuration"):
        load_config(KubeSettings(env={}, service_account_dir=str(tmp_path / "none")))


def test_a_rotated_token_is_used_by_the_next_request(server, tmp_path, token_file) -> None:
    """Projected service-account tokens rotate (hourly): the file is re-read when it changes, not once."""
    api = api_for(server, tmp_path, token_file)
    api.get("Deployment", "serving-canary")
    assert server.requests[-1].token == "token-1"

    # The kubelet swaps the file atomically; the old token stops being accepted.
    rotated = tmp_path / "token.new"
    rotated.write_text("token-2-longer\n")
    os.replace(rotated, token_file)
    server.tokens = {"token-2-longer"}
    before = len(server.requests)
    api.get("Deployment", "serving-canary")
    assert [r.token for r in server.requests[before:]] == ["token-2-longer"]  # the first try, no 401 round trip


def test_a_401_rereads_the_token_file_once(server, tmp_path, token_file) -> None:
    """A token replaced without a visible change to the file's stamp is still picked up after one 401."""
    api = api_for(server, tmp_path, token_file)
    api.get("Deployment", "serving-canary")
    stat = token_file.stat()
    token_file.write_text("token-X\n")  # same length, same inode, same mtime restored
    os.utime(token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    server.tokens = {"token-X"}
    before = len(server.requests)
    api.get("Deployment", "serving-canary")
    assert [r.token for r in server.requests[before:]] == ["token-1", "token-X"]

    server.tokens = {"something-else"}  # a token the file does not hold: a clear error, no loop
    with pytest.raises(DeploymentError, match="401"):
        api.get("Deployment", "serving-canary")


# -- retries ---------------------------------------------------------------------------------


def test_429_and_503_are_retried_honouring_retry_after(server, tmp_path, token_file) -> None:
    api = api_for(server, tmp_path, token_file)
    is_get = lambda r: r.method == "GET"  # noqa: E731
    server.fail(is_get, status_reply(429, "TooManyRequests", "slow down", {"Retry-After": "1"}))
    server.fail(is_get, status_reply(503, "ServiceUnavailable", "etcd leader change"))
    start = time.monotonic()
    obj = api.get("Deployment", "serving-canary")
    elapsed = time.monotonic() - start
    assert obj["metadata"]["name"] == "serving-canary"
    assert [r.method for r in server.requests] == ["GET", "GET", "GET"]
    assert 1.0 <= elapsed < 10, elapsed  # the Retry-After second was waited, then the 503 backoff


def test_retries_end_with_a_clear_error(server, tmp_path, token_file) -> None:
    api = api_for(server, tmp_path, token_file)
    server.fail(lambda r: True, status_reply(500, "InternalError", "boom"), times=FAST.attempts)
    with pytest.raises(DeploymentError, match="GET Deployment/serving-canary: 500"):
        api.get("Deployment", "serving-canary")
    assert len(server.requests) == FAST.attempts
    server.fail(lambda r: True, status_reply(403, "Forbidden", "RBAC says no"))
    with pytest.raises(DeploymentError, match="403 Forbidden: RBAC says no"):
        api.get("Deployment", "serving-canary")  # not transient: not retried
    assert len(server.requests) == FAST.attempts + 1


def test_connection_errors_are_retried_then_reported(tmp_path, token_file) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        f"users: [{{name: u, user: {{tokenFile: '{token_file}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    client = connect(KubeSettings(kubeconfig=str(kubeconfig), retry=FAST), field_manager=FIELD_MANAGER)
    with pytest.raises(DeploymentError, match="ConnectError"):
        KubeApi(client, NS).get("Deployment", "serving-canary")
    assert client._client._client._transport.retried == FAST.attempts - 1


def test_a_409_on_a_patch_is_resolved_by_rereading_and_resending(server, store, tmp_path, token_file) -> None:
    api = api_for(server, tmp_path, token_file)
    server.fail(
        lambda r: r.method == "PATCH",
        Reply(409, {"kind": "Status", "apiVersion": "v1", "code": 409, "reason": "Conflict", "message": "modified"}),
    )
    patched = api.patch(
        "Deployment",
        "serving-canary",
        {"spec": {"replicas": 3}},
        "application/strategic-merge-patch+json",
    )
    assert patched["spec"]["replicas"] == 3
    assert [r.method for r in server.requests] == ["PATCH", "GET", "PATCH"]
    assert {r.params.get("fieldManager") for r in server.requests if r.method == "PATCH"} == {FIELD_MANAGER}
    assert store.get_object("deployments", NS, "serving-canary")["spec"]["replicas"] == 3

    server.fail(lambda r: r.method == "PATCH", status_reply(409, "Conflict", "modified"), times=10)
    with pytest.raises(DeploymentError, match="409"):
        api.patch("Deployment", "serving-canary", {"spec": {"replicas": 4}}, "application/merge-patch+json")

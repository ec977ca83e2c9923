"""Rollout status (``kubectl rollout status`` semantics) and the ConfigMap rollout-state store, on a fake API server.

No Kubernetes cluster can run here: kube_fake_api.FakeKubeServer is a real HTTPS
server on 127.0.0.1 with the API server's resourceVersion rules (409 on a stale
``PUT``, 409 AlreadyExists on a ``POST``). There is no Deployment controller
either, so the tests move a Deployment's ``status`` themselves, the way the
controller would (``ObjectStore.on_read``). The backend and the store are reached
through the deployer (``KubernetesDeployer(kubeconfig=...)``), as in production.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml_platform.deployment.backend import DeploymentError
from ml_platform.deployment.deployer import KubernetesDeployer
from ml_platform.deployment.kube_rollout_state import (
    LAST_KEY,
    RECORD_KEY,
    ConfigMapRolloutStateStore,
    RolloutStateConflict,
    configmap_name,
)
from ml_platform.deployment.kubernetes import KubernetesBackend, RolloutFailed, rollout_status
from ml_platform.deployment.rollout_state import PROGRESSING, RolloutRecord, RolloutStateError, store_for
from ml_platform_tests.deployment.kube_fake_api import FakeKubeServer, ObjectStore

NS = "ml-serving"
MODEL = "iris"


def deployment(name: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "ml-platform-serving", "ml-platform/model": MODEL}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "serving"}]}},
        },
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                   "availableReplicas": 2},
    }  # fmt: skip


def route() -> dict[str, Any]:
    refs = [{"name": f"{MODEL}-serving-stable", "weight": 100}, {"name": f"{MODEL}-serving-canary", "weight": 0}]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": f"{MODEL}-serving"},
        "spec": {"rules": [{"backendRefs": refs}]},
    }


@pytest.fixture
def objects() -> ObjectStore:
    store = ObjectStore()
    for name in ("serving-stable", "serving-canary"):
        store.put_object("deployments", NS, deployment(f"{MODEL}-{name}"))
    store.put_object("httproutes", NS, route())
    return store


@pytest.fixture
def server(objects: ObjectStore, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("deployer-token")
    with FakeKubeServer(objects, tmp_path, tokens={"deployer-token"}) as running:
        running.kubeconfig(tmp_path / "kubeconfig", token_file=token)
        yield running


@pytest.fixture
def backend(server: FakeKubeServer, tmp_path: Path) -> KubernetesBackend:
    deployer = KubernetesDeployer(kubeconfig=str(tmp_path / "kubeconfig"), namespace=NS)
    backend = deployer.backend_for(MODEL)
    backend.poll_seconds = 0.05
    return backend


class Controller:
    """Plays the Deployment controller on reads: each GET of the named Deployment advances its status one stage."""

    def __init__(self, name: str, stages: list[dict[str, Any]]) -> None:
        self.name, self.stages, self.reads = name, stages, 0

    def __call__(self, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] != self.name:
            return
        stage = self.stages[min(self.reads, len(self.stages) - 1)]
        self.reads += 1
        generation = obj["metadata"]["generation"]
        obj["status"] = {key: (generation if value == "current" else value) for key, value in stage.items()}


# -- rollout status ---------------------------------------------------------------------------


def test_rollout_status_follows_kubectl() -> None:
    base = {"metadata": {"name": "d", "generation": 5}, "spec": {"replicas": 3}}

    def status(**fields: Any) -> tuple[bool, str]:
        return rollout_status({**base, "status": {"observedGeneration": 5, **fields}})

    assert rollout_status({**base, "status": {"observedGeneration": 4}}) == (
        False,
        "waiting for the deployment spec update to be observed",
    )
    assert status(replicas=3, updatedReplicas=1) == (False, "1 of 3 new replicas have been updated")
    assert status(replicas=4, updatedReplicas=3, readyReplicas=3, availableReplicas=3) == (
        False,
        "1 old replicas are pending termination",
    )
    assert status(replicas=3, updatedReplicas=3, readyReplicas=2, availableReplicas=2)[1] == (
        "2 of 3 updated replicas are ready"
    )
    assert status(replicas=3, updatedReplicas=3, readyReplicas=3, availableReplicas=2)[1] == (
        "2 of 3 updated replicas are available"
    )
    assert status(replicas=3, updatedReplicas=3, readyReplicas=3, availableReplicas=3)[0] is True
    stuck = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": 'ReplicaSet "d-5c" has timed out progressing.'}  # fmt: skip
    with pytest.raises(RolloutFailed, match='Deployment/d exceeded its progress deadline: ReplicaSet "d-5c"'):
        status(replicas=3, updatedReplicas=1, conditions=[stuck])
    # A stale status (old generation) never decides, not even a deadline exceeded for the previous template.
    assert rollout_status({**base, "status": {"observedGeneration": 4, "conditions": [stuck]}})[0] is False


def test_start_canary_waits_for_the_rollout_to_complete(backend, objects, server) -> None:
    canary = f"{MODEL}-serving-canary"
    objects.on_read = Controller(
        canary,
        [
            {"observedGeneration": 1},  # spec change not observed yet
            {"observedGeneration": "current", "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1},
            {
                "observedGeneration": "current",
                "replicas": 2,
                "updatedReplicas": 1,
                "readyReplicas": 1,
                "availableReplicas": 1,
            },
            {
                "observedGeneration": "current",
                "replicas": 1,
                "updatedReplicas": 1,
                "readyReplicas": 1,
                "availableReplicas": 1,
            },
        ],
    )
    backend.canary_replicas = 1
    backend.start_canary("7", timeout=30)
    stored = objects.get_object("deployments", NS, canary)
    assert stored["metadata"]["generation"] == 2
    assert stored["spec"]["template"]["metadata"]["annotations"]["ml-platform/model-version"] == "7"
    env = stored["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "MODEL_URI", "value": "models:/iris-random-forest/7"}]
    assert objects.on_read.reads == 4  # polled until every stage passed
    assert backend.canary_health() == (True, "ready, version 7")
    assert backend.current_weight() == 0


def test_a_progress_deadline_exceeded_fails_fast(backend, objects) -> None:
    canary = f"{MODEL}-serving-canary"
    stuck = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": 'ReplicaSet "iris-serving-canary-7f" has timed out progressing.'}  # fmt: skip
    objects.on_read = Controller(
        canary,
        [
            {"observedGeneration": "current", "replicas": 2, "updatedReplicas": 1},
            {"observedGeneration": "current", "replicas": 2, "updatedReplicas": 1, "conditions": [stuck]},
        ],
    )
    start = time.monotonic()
    with pytest.raises(RolloutFailed, match=r"exceeded its progress deadline.*timed out progressing"):
        backend.start_canary("8", timeout=300)
    assert time.monotonic() - start < 30  # not the 300 s timeout
    healthy, detail = backend.canary_health()
    assert not healthy and "progress deadline" in detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", "7\n  - name: EVIL"),
        ("version", "latest"),
        ("version", "../1"),
        ("image", "ghcr.io/x/y:1 --privileged"),
        ("model_name", "../../etc"),
    ],
)
def test_a_crafted_value_never_reaches_the_api(backend, server, field, value) -> None:
    """Attack: a version, image or model name that is not what the platform writes is refused before any request."""
    version = value if field == "version" else "7"
    if field == "image":
        backend.canary_image = value
    if field == "model_name":
        backend.model_name = value
    with pytest.raises(DeploymentError, match=r"version|image|registered model name"):
        backend.start_canary(version, timeout=5)
    if field == "version":
        with pytest.raises(DeploymentError, match="not a version number"):
            backend.serve_on_stable(version, timeout=5)
    assert server.requests == []


def test_a_canary_weight_patch_survives_a_conflict(backend, objects, server) -> None:
    from ml_platform_tests.deployment.kube_fake_api import status_reply

    server.fail(lambda r: r.method == "PATCH", status_reply(409, "Conflict", "the object has been modified"))
    backend.set_canary_weight(25)
    refs = objects.get_object("httproutes", NS, f"{MODEL}-serving")["spec"]["rules"][0]["backendRefs"]
    assert [r["weight"] for r in refs] == [75, 25]
    assert backend.current_weight() == 25


# -- the rollout-state store ------------------------------------------------------------------


def record(run_id: str, step: int = 1, weight: int = 10) -> RolloutRecord:
    return RolloutRecord(model=MODEL, version="7", phase=PROGRESSING, step=step, weight=weight, run_id=run_id,
                         weights=[10, 50], registered_name="iris-random-forest", champion="6")  # fmt: skip


def test_rollout_state_round_trips_through_a_configmap(backend, objects) -> None:
    store = store_for(backend)
    assert isinstance(store, ConfigMapRolloutStateStore) and store is backend.rollout_state_store()
    assert store.load(MODEL) is None

    saved = record("run-a")
    store.save(saved)
    cm = objects.get_object("configmaps", NS, configmap_name(MODEL))
    assert cm["metadata"]["labels"]["ml-platform/model"] == MODEL
    fresh = ConfigMapRolloutStateStore(backend.api)  # another process reading it
    loaded = fresh.load(MODEL)
    assert loaded == saved and loaded is not saved

    saved.step, saved.weight = 2, 50
    store.save(saved)  # an update of what this store saw last
    assert fresh.load(MODEL).weight == 50

    store.clear(MODEL)
    assert fresh.load(MODEL) is None
    cm = objects.get_object("configmaps", NS, configmap_name(MODEL))
    assert RECORD_KEY not in cm["data"] and RolloutRecord.from_json(cm["data"][LAST_KEY]).weight == 50
    store.clear(MODEL)  # nothing in progress: no error


def test_a_concurrent_update_by_another_run_is_a_conflict(backend, objects) -> None:
    run_a = ConfigMapRolloutStateStore(backend.api)
    run_b = ConfigMapRolloutStateStore(backend.api)
    mine = record("run-a")
    run_a.save(mine)

    # run-b takes the rollout over (say, run-a looked dead) and writes its progress.
    taken = run_b.load(MODEL)
    taken.claim("run-b", "canary")
    taken.step, taken.weight = 2, 50
    run_b.save(taken)

    # run-a, still alive, writes from its stale view: refused, and run-b's record is intact.
    mine.weight = 30
    with pytest.raises(RolloutStateConflict, match="written by run run-b"):
        run_a.save(mine)
    assert run_b.load(MODEL).weight == 50
    with pytest.raises(RolloutStateConflict):
        run_a.clear(MODEL)  # nor may it clear what it has not seen
    assert run_b.load(MODEL) is not None

    # After re-reading, run-a sees who drives the rollout now.
    assert run_a.load(MODEL).run_id == "run-b"

    # run-b finishes and clears; a run-a that missed it cannot bring the finished rollout back.
    run_a._seen.pop(MODEL)  # (as a process that never read the ConfigMap)
    run_b.clear(MODEL)
    with pytest.raises(RolloutStateConflict, match="finished and cleared by run run-b"):
        run_a.save(mine)
    assert run_b.load(MODEL) is None
    # A new rollout (another start) may be written after it.
    run_a.save(record("run-c"))
    assert run_b.load(MODEL).run_id == "run-c"


def test_a_conflict_that_is_not_another_runs_record_is_resolved_by_reapplying(backend, objects, server) -> None:
    store = ConfigMapRolloutStateStore(backend.api)
    mine = record("run-a")
    store.save(mine)
    # Someone labels the ConfigMap (kubectl label): its resourceVersion moves, the record does not.
    name = configmap_name(MODEL)
    cm = objects.get_object("configmaps", NS, name)
    cm["metadata"]["labels"]["team"] = "ml"
    objects.put_object("configmaps", NS, cm)

    before = len(server.requests)
    mine.weight = 50
    store.save(mine)
    assert [r.method for r in server.requests[before:]] == ["PUT", "GET", "PUT"]  # 409, re-read, re-applied
    assert ConfigMapRolloutStateStore(backend.api).load(MODEL).weight == 50

    # A fresh store of the same run (no resourceVersion seen): the create meets AlreadyExists, same rule.
    mine.weight = 60
    ConfigMapRolloutStateStore(backend.api).save(mine)
    assert store.load(MODEL).weight == 60


def test_the_deployer_role_allows_what_the_store_and_backend_do(backend, server, tmp_path) -> None:
    """Every request of a rollout (weights, canary, state saved/loaded/cleared) is allowed by deployer-rbac.yaml."""
    rbac = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "deployer-rbac.yaml"
    role = next(d for d in yaml.safe_load_all(rbac.read_text()) if d["kind"] == "Role")
    allowed = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}  # fmt: skip
    store = backend.rollout_state_store()
    store.load(MODEL)
    store.save(record("run-a"))
    backend.set_canary_weight(10)
    store.save(record("run-a", step=2, weight=50))
    backend.metrics_targets("canary")
    backend.status()
    store.clear(MODEL)
    verbs = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    seen = set()
    for request in server.requests:
        parts = request.path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        resource = parts[parts.index("namespaces") + 2]
        named = len(parts) > parts.index("namespaces") + 3
        verb = "list" if request.method == "GET" and not named else verbs[request.method]
        seen.add((group, resource, verb))
        assert (group, resource, verb) in allowed, (request.method, request.path)
    assert {("", "configmaps", "create"), ("", "configmaps", "update"), ("", "pods", "list")} <= seen


def test_a_corrupt_record_is_a_clear_error(backend, objects) -> None:
    objects.put_object(
        "configmaps",
        NS,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": configmap_name(MODEL)},
         "data": {RECORD_KEY: "{not json"}},
    )  # fmt: skip
    with pytest.raises(RolloutStateError, match="not JSON"):
        backend.rollout_state_store().load(MODEL)
    with pytest.raises(RolloutStateError, match="bad model name"):
        configmap_name("../etc")


def test_an_unreachable_store_is_a_state_error(backend, server) -> None:
    server.tokens = {"a-token-nobody-has"}
    with pytest.raises(RolloutStateError, match="401"):
        backend.rollout_state_store().load(MODEL)
    with pytest.raises(DeploymentError):
        backend.status()

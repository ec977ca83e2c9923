"""The local router: real nginx in front of stub upstreams (no serving processes: fast).

Covers the config nginx accepts, the weighted split, pinning by
`X-ML-Track`, failover from a dead canary to the stable backup (and the
router view still counting it as failing), graceful reloads under load
without a single failed request, and config injection: a prefix with spaces,
quotes, `;`, braces is quoted (nginx starts, routes and writes where told),
values that cannot be quoted literally and non-numeric numbers are refused.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ml_platform.deployment.backend import DeploymentError
from ml_platform.deployment.local import LocalBackend
from ml_platform.deployment.nginx import (
    ModelRoute,
    NginxConfigValueError,
    NginxRouter,
    RouterConfig,
    Routing,
    render_config,
)
from ml_platform.deployment.router_log import RouterLogReader
from ml_platform_tests.conftest import free_port
from ml_platform_tests.deployment.helpers import StubUpstream, nginx_binary

pytestmark = pytest.mark.slow


def one(routing: Routing, log: Path | None = None, model: str = "m") -> RouterConfig:
    """A router config with one model, the default one (unprefixed paths), logging to ``log``."""
    access_log = log if log is not None else Path("/nonexistent")
    return RouterConfig(routing.generation, (ModelRoute(model, routing, access_log),), model)


@pytest.fixture
def upstreams() -> Iterator[tuple[StubUpstream, StubUpstream]]:
    with StubUpstream("stable") as stable, StubUpstream("canary") as canary:
        yield stable, canary


@pytest.fixture
def router(tmp_path: Path) -> Iterator[NginxRouter]:
    router = NginxRouter(tmp_path / "nginx", free_port(), nginx_binary())
    yield router
    router.stop()


def tracks(router: NginxRouter, n: int, **headers: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=router.url, timeout=10) as client:
        for _ in range(n):
            response = client.post("/predict", json={}, headers=headers)
            assert response.status_code == 200, response.text
            seen[response.json()["track"]] += 1
    return seen


@pytest.mark.parametrize(
    "routing",
    [
        Routing(1, 9001),
        Routing(2, 9001, 9002, 0),
        Routing(3, 9001, 9002, 25),
        Routing(4, 9001, 9002, 100),
        Routing(5, 9001, 9002, 0, pin_canary=False),
    ],
)
def test_every_generation_is_a_config_nginx_accepts(tmp_path: Path, routing: Routing) -> None:
    router = NginxRouter(tmp_path, free_port(), nginx_binary())
    for folder in ("logs", "tmp"):
        (tmp_path / folder).mkdir()
    router.conf.write_text(render_config(tmp_path, router.public_port, one(routing, tmp_path / "logs" / "m.log")))
    check = subprocess.run(router._cmd("-t"), capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_weights_pinning_and_failover(router: NginxRouter, upstreams) -> None:
    stable, canary = upstreams
    router.apply(one(Routing(1, stable.port, canary.port, 0), router.access_log))
    assert tracks(router, 40) == {"stable": 40}
    assert tracks(router, 5, **{"X-ML-Track": "canary"}) == {"canary": 5}

    router.apply(one(Routing(2, stable.port, canary.port, 30), router.access_log))
    split = tracks(router, 400)
    assert 70 <= split["canary"] <= 170, split  # 30% of 400 = 120, hashed on random request ids
    assert tracks(router, 5, **{"X-ML-Track": "stable"}) == {"stable": 5}

    canary.stop()  # the canary dies: its share goes to the stable backup, no client sees an error
    assert tracks(router, 60) == {"stable": 60}
    # ... but a request pinned to the canary is never answered by stable (feedback, smoke tests)
    pinned = httpx.post(f"{router.url}/feedback", json={}, headers={"X-ML-Track": "canary"}, timeout=10)
    assert pinned.status_code == 502
    attempts = router.access_log.read_text().splitlines()
    assert any(f"127.0.0.1:{canary.port}, 127.0.0.1:{stable.port}" in line for line in attempts)


def test_reloads_under_load_drop_no_request(router: NginxRouter, upstreams) -> None:
    stable, canary = upstreams
    router.apply(one(Routing(1, stable.port, canary.port, 10), router.access_log))
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def client() -> None:
        with httpx.Client(base_url=router.url, timeout=10) as http:
            while not done.is_set():
                try:
                    response = http.post("/predict", json={})
                    if response.status_code != 200:
                        failures.append(str(response.status_code))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                count[0] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for generation in range(2, 22):
            router.apply(one(Routing(generation, stable.port, canary.port, (generation * 13) % 90), router.access_log))
        router.apply(one(Routing(22, stable.port, None), router.access_log))
        assert router.wait_drained(10)
    finally:
        done.set()
        for thread in threads:
            thread.join(15)
    assert count[0] > 100
    assert failures == [], failures[:5]
    assert router.generation() == 22


def test_a_dead_canary_under_a_weighted_split_goes_to_stable_and_still_counts_as_failing(
    router: NginxRouter, upstreams
) -> None:
    """Passive health check: the dead canary is marked down, its share is answered by stable, and the
    router view counts every request meant for it as a failed canary attempt (attempted or skipped)."""
    stable, canary = upstreams
    router.apply(one(Routing(1, stable.port, canary.port, 50), router.access_log))
    view = RouterLogReader(router.access_log, f"127.0.0.1:{canary.port}")
    canary.stop()
    assert tracks(router, 120) == {"stable": 120}  # no client sees the dead canary
    lines = [json.loads(line) for line in router.access_log.read_text().splitlines()]
    meant_for_canary = [e for e in lines if e["uri"] == "/predict" and e["pool"] == "m__canary"]
    skipped = [e for e in meant_for_canary if f"127.0.0.1:{canary.port}" not in e["addr"]]
    assert len(meant_for_canary) > 30 and skipped, "nginx never marked the dead canary down"
    attempts = view.read_new()
    assert len(attempts) == len(meant_for_canary)
    assert all(a.failed for a in attempts)
    # nginx's own error answers are JSON too
    pinned = httpx.post(f"{router.url}/predict", json={}, headers={"X-ML-Track": "canary"}, timeout=10)
    assert pinned.status_code == 502 and pinned.json()["error"] == "upstream unavailable"


WEIRD_HOME = 'platform home; } "quoted" \\ #not-a-comment { x'


def test_a_prefix_with_spaces_quotes_and_braces_is_quoted_and_nginx_routes(tmp_path: Path, upstreams) -> None:
    stable, canary = upstreams
    prefix = tmp_path / WEIRD_HOME / "deployments" / "m" / "nginx"
    router = NginxRouter(prefix, free_port(), nginx_binary())
    try:
        router.apply(one(Routing(1, stable.port, canary.port, 0), router.access_log))
        assert tracks(router, 5) == {"stable": 5}
        assert tracks(router, 3, **{"X-ML-Track": "canary"}) == {"canary": 3}
        # every path was taken literally: nginx wrote exactly where it was told
        assert router.pid_file.exists() and router.master_pid() is not None
        assert '"uri":"/predict"' in router.access_log.read_text()
        dumped = subprocess.run(router._cmd("-T"), capture_output=True, text=True, check=True).stdout
        assert dumped.count("pid ") == 1
        logs = [line.split("access_log ", 1)[1] for line in dumped.splitlines() if "access_log " in line]
        assert logs and all(entry.startswith('"') for entry in logs)  # every log path is a quoted string
        assert 'pid "' + str(prefix).replace("\\", "\\\\").replace('"', '\\"') + '/nginx.pid";' in dumped
    finally:
        router.stop()


@pytest.mark.parametrize(
    "prefix_suffix",
    ["home $request_uri", "home\nerror_log /tmp/owned.log;", "home\rx", "home\x00x"],
)
def test_paths_quoting_cannot_make_literal_are_refused(tmp_path: Path, prefix_suffix: str) -> None:
    prefix = tmp_path / "nginx"
    with pytest.raises(NginxConfigValueError, match=r"cannot go into nginx\.conf"):
        render_config(Path(str(prefix) + prefix_suffix), 8080, one(Routing(1, 9001), tmp_path / "m.log"))


@pytest.mark.parametrize(
    ("public_port", "routing", "message"),
    [
        ("8080; include /etc/passwd", Routing(1, 9001), "public port"),
        (8080, Routing(1, "9001; }"), "stable upstream port"),  # type: ignore[arg-type]
        (8080, Routing(1, 9001, 70000), "canary upstream port"),
        (8080, Routing(1, 9001, 9002, "5% canary; * stable"), "canary weight"),  # type: ignore[arg-type]
        (8080, Routing(1, 9001, 9002, 101), "canary weight"),
        (8080, Routing("1}", 9001), "generation"),  # type: ignore[arg-type]
        (True, Routing(1, 9001), "public port"),
    ],
)
def test_numbers_are_checked_before_they_reach_the_config(
    tmp_path: Path, public_port: object, routing: Routing, message: str
) -> None:
    router = NginxRouter(tmp_path, public_port, nginx_binary())  # type: ignore[arg-type]
    with pytest.raises(NginxConfigValueError, match=message):
        router.apply(one(routing, tmp_path / "m.log"))
    assert not router.conf.exists() and not any(tmp_path.glob("nginx.conf*"))


@pytest.mark.parametrize(
    "name", ["iris;} error_log /tmp/x; {", "iris\nuser root;", "a$host", 'm"q', "../../etc", "", "Iris", "_router"]
)
def test_crafted_model_names_are_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    with pytest.raises(DeploymentError, match="is not deployable locally"):
        LocalBackend(name, registered_name="iris-random-forest", deployments_dir=tmp_path)
    if name != "Iris":  # a registered MLflow name may hold capitals (it only reaches model URIs)
        with pytest.raises(DeploymentError, match="is not deployable locally"):
            LocalBackend("iris", registered_name=name or "..", deployments_dir=tmp_path)
    with pytest.raises(NginxConfigValueError, match=r"cannot go into nginx\.conf"):
        render_config(tmp_path, 8080, one(Routing(1, 9001), tmp_path / "m.log", model=name))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("version", ["7; }", "7\nlisten 80;", "$uri", '7"', "0", "-1", "latest"])
def test_crafted_versions_are_refused_before_anything_starts(tmp_path: Path, version: str) -> None:
    backend = LocalBackend(
        "iris", registered_name="iris-random-forest", deployments_dir=tmp_path, public_port=free_port()
    )
    for step in (backend.ensure_stable, backend.start_canary, backend.serve_on_stable):
        with pytest.raises(DeploymentError, match="is not a version number"):
            step(version, 5.0)
    assert not (tmp_path / "_router").exists()
    assert not (tmp_path / "iris" / "run").exists()

"""The local router: real nginx in front of stub upstreams (no serving processes: fast).

Covers the config nginx accepts, the weighted split, pinning by
`X-ML-Track`, failover from a dead canary to the stable backup, and graceful
reloads under load without a single failed request.
"""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ml_platform.deployment.nginx import NginxRouter, Routing, render_config
from ml_platform_tests.conftest import free_port
from ml_platform_tests.deployment.helpers import StubUpstream, nginx_binary

pytestmark = pytest.mark.slow


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
    router.conf.write_text(render_config(tmp_path, router.public_port, routing))
    check = subprocess.run(router._cmd("-t"), capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_weights_pinning_and_failover(router: NginxRouter, upstreams) -> None:
    stable, canary = upstreams
    router.apply(Routing(1, stable.port, canary.port, 0))
    assert tracks(router, 40) == {"stable": 40}
    assert tracks(router, 5, **{"X-ML-Track": "canary"}) == {"canary": 5}

    router.apply(Routing(2, stable.port, canary.port, 30))
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
    router.apply(Routing(1, stable.port, canary.port, 10))
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
            router.apply(Routing(generation, stable.port, canary.port, (generation * 13) % 90))
        router.apply(Routing(22, stable.port, None))
        assert router.wait_drained(10)
    finally:
        done.set()
        for thread in threads:
            thread.join(15)
    assert count[0] > 100
    assert failures == [], failures[:5]
    assert router.generation() == 22

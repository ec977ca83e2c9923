"""The shared local router: one nginx for every model, its config rendered from every model's state.

Each model's deployment (``<home>/deployments/<model>/state.json``) records the
routing it wants (``route``: ports, canary weight, pinning, its own generation).
Applying one model's change re-renders the *whole* config from every model's
state, with the caller's new routing in place of its state's, under a
router-level lock (``<home>/deployments/_router/lock``) held only for the
render, the reload and the caller's state write. So two models' rollouts run at
the same time (each under its own deployment lock), and neither can undo the
other's routing: a render always reads the other models' latest saved routing.

``_router`` (and ``_prometheus``) cannot be model names (those start with a letter).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ml_platform.catalog import MODEL_NAME_PATTERN, CatalogError, default_model_name
from ml_platform.deployment.nginx import ModelRoute, NginxError, NginxRouter, RouterConfig, Routing
from ml_platform.deployment.state import DeploymentBusy, StateStore

ROUTER_DIRNAME = "_router"
ROUTER_LOCK_TIMEOUT = 120.0


def routing_from(raw: Mapping[str, Any]) -> Routing:
    """A model's saved ``route`` as :class:`Routing`."""
    return Routing(
        generation=int(raw["generation"]),
        stable_port=int(raw["stable_port"]),
        canary_port=None if raw.get("canary_port") is None else int(raw["canary_port"]),
        canary_weight=int(raw.get("canary_weight", 0)),
        pin_canary=bool(raw.get("pin_canary", True)),
        stable_peer_ports=tuple(int(p) for p in raw.get("stable_peer_ports") or ()),
        canary_peer_ports=tuple(int(p) for p in raw.get("canary_peer_ports") or ()),
    )


def routing_dict(routing: Routing) -> dict[str, Any]:
    return {
        "generation": routing.generation,
        "stable_port": routing.stable_port,
        "canary_port": routing.canary_port,
        "canary_weight": routing.canary_weight,
        "pin_canary": routing.pin_canary,
        "stable_peer_ports": list(routing.stable_peer_ports),
        "canary_peer_ports": list(routing.canary_peer_ports),
    }


def model_access_log(deployments_root: Path, model: str) -> Path:
    """Where the router writes ``model``'s requests (inside that model's deployment folder)."""
    return deployments_root / model / "router" / "access.log"


def _default_model() -> str | None:
    try:
        return default_model_name()
    except CatalogError:
        return None


class SharedRouter:
    """The one nginx of a platform home: render from every model's state, reload, under the router lock."""

    def __init__(
        self, deployments_root: Path, public_port: int, binary: str = "nginx", default_model: str | None = None
    ) -> None:
        self.root = deployments_root
        self.folder = deployments_root / ROUTER_DIRNAME
        self.info_path = self.folder / "router.json"
        self.lock_path = self.folder / "lock"
        self.configured_port = public_port
        self.binary = binary
        self._default_model = default_model

    # -- what runs ---------------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.info_path.read_text()))
        except (OSError, ValueError):
            return {}

    def nginx(self) -> NginxRouter:
        """The nginx instance: on the port it runs on, else on the configured port."""
        port = self._info().get("public_port")
        if isinstance(port, int) and port != self.configured_port:
            running = NginxRouter(self.folder, port, self.binary)
            if running.running():
                return running
        return NginxRouter(self.folder, self.configured_port, self.binary)

    @property
    def public_port(self) -> int:
        return self.nginx().public_port

    def default_model(self) -> str | None:
        return self._default_model if self._default_model is not None else _default_model()

    def routes(self) -> dict[str, Routing]:
        """Every model's saved routing (models whose state has none are not routed)."""
        found: dict[str, Routing] = {}
        for state_file in sorted(self.root.glob("*/state.json")):
            name = state_file.parent.name
            if not MODEL_NAME_PATTERN.match(name):
                continue
            try:
                state = StateStore(state_file.parent).load()
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if state is not None and state.route:
                found[name] = routing_from(state.route)
        return found

    # -- changing it -------------------------------------------------------------------------

    @contextmanager
    def locked(self, timeout: float = ROUTER_LOCK_TIMEOUT) -> Iterator[None]:
        """The router lock (render + reload + the caller's state write); waits up to ``timeout`` s."""
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        with open(self.lock_path, "a+") as handle:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise DeploymentBusy(
                            f"the router lock {self.lock_path} stayed held for {timeout:.0f}s"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def render(self, changes: Mapping[str, Routing | None]) -> RouterConfig:
        """The config of every model's saved routing with ``changes`` applied (None: unrouted)."""
        routes = self.routes()
        for model, routing in changes.items():
            if routing is None:
                routes.pop(model, None)
            else:
                routes[model] = routing
        generation = int(self._info().get("generation", 0)) + 1
        return RouterConfig(
            generation=generation,
            routes=tuple(
                ModelRoute(model, routing, model_access_log(self.root, model))
                for model, routing in sorted(routes.items())
            ),
            default_model=self.default_model(),
        )

    def apply(self, changes: Mapping[str, Routing | None], timeout: float = 30.0) -> NginxRouter:
        """Re-render from every model's state plus ``changes`` and reload (call under :meth:`locked`).

        With no model left to route, nginx stops. Raises :class:`NginxError` when nginx refuses.
        """
        config = self.render(changes)
        nginx = self.nginx()
        if not config.routes:
            nginx.stop()
            self._write_info(nginx.public_port, config.generation)
            return nginx
        nginx.apply(config, timeout)
        self._write_info(nginx.public_port, config.generation)
        return nginx

    def _write_info(self, port: int, generation: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.info_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"public_port": port, "generation": generation}))
        os.replace(tmp, self.info_path)

    def model_generation(self, model: str) -> int | None:
        """The routing generation of ``model`` that nginx answers with now (None: not routed or not running)."""
        import httpx

        try:
            response = httpx.get(f"{self.nginx().url}/models/{model}/_deployment", timeout=2)
            return int(response.json()["generation"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None


__all__ = ["ROUTER_DIRNAME", "NginxError", "SharedRouter", "model_access_log", "routing_dict", "routing_from"]

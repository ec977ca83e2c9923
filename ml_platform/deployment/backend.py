"""What a deployer backend does: the steps of one model's canary rollout, whatever runs the pods or processes.

A *deployer* (:mod:`.deployer`: :class:`~.deployer.LocalDeployer`, :class:`~.deployer.KubernetesDeployer`)
holds a backend's settings and hands out one backend per model (``backend_for(model)``); the
backend of one model never touches another model's processes, state, lock or routing.

The rollout (:mod:`.rollout`) drives a backend through these steps and keeps
the registry in step; the backend only moves traffic and processes:

1. ``ensure_stable(champion)``: the stable track runs and serves ``@champion``
2. ``start_canary(version)``: the canary runs the pinned version, with 0% of traffic
3. ``set_canary_weight(w)``: ``w`` percent of requests go to the canary
4. ``serve_on_stable(version)``: stable re-resolves ``@champion`` (moved by the caller) and serves it
5. ``retire_canary()``: canary weight 0, then the canary is removed (or left idle)

Smoke tests go through ``public_url`` with ``X-ML-Track: <track>`` (the route
pins such requests to that track).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ml_platform.deployment.measurements import RouterAttempt

TRACK_HEADER = "X-ML-Track"


class DeploymentError(RuntimeError):
    """A deployment step could not be carried out."""


@dataclass
class DeploymentStatus:
    """What is deployed now."""

    backend: str
    model_name: str
    public_url: str | None
    stable_version: str | None
    canary_version: str | None
    canary_weight: int
    detail: dict[str, Any] = field(default_factory=dict)
    model: str = ""  # the platform model name (catalog instance); model_name is the registered MLflow name

    def lines(self) -> list[str]:
        return [
            f"backend:        {self.backend}",
            f"model:          {self.model or self.model_name} (registered as {self.model_name})",
            f"public URL:     {self.public_url or '-'}",
            f"stable serves:  {self.stable_version or '-'}",
            f"canary serves:  {self.canary_version or '-'} ({self.canary_weight}% of traffic)",
            *[f"{k + ':':<15} {v}" for k, v in self.detail.items()],
        ]


class RouterView(Protocol):
    """Incremental reader of the router's record of canary attempts."""

    def read_new(self) -> list[RouterAttempt]: ...


class DeploymentBackend(Protocol):
    """The operations a rollout needs from where one model's serving runs.

    ``model`` is the platform model name (catalog instance: route, folders, object names);
    ``model_name`` the registered MLflow model it serves.
    """

    kind: str
    model: str
    model_name: str

    @property
    def public_url(self) -> str: ...

    def lock(
        self, timeout: float = 0.0, *, holder: str = "", force: bool = False, log: Callable[[str], None] | None = None
    ) -> AbstractContextManager[None]:
        """One operation at a time: wait ``timeout`` s, then raise ``DeploymentBusy`` naming the holder.

        ``holder`` describes the caller (recorded for others to see); ``force``
        breaks a lock held by someone else; ``log`` hears about broken locks.
        """
        ...

    def status(self) -> DeploymentStatus: ...

    def ensure_stable(self, champion_version: str, timeout: float) -> None: ...

    def start_canary(self, version: str, timeout: float) -> None: ...

    def canary_health(self) -> tuple[bool, str]: ...

    def set_canary_weight(self, weight: int) -> None: ...

    def serve_on_stable(self, version: str, timeout: float) -> None: ...

    def retire_canary(self) -> None: ...

    def metrics_targets(self, track: str) -> list[str]: ...

    def router_view(self) -> RouterView | None: ...

    def shutdown(self) -> None: ...


class Deployer(Protocol):
    """Settings of one backend kind; hands out the backend that deploys one model."""

    kind: str

    def backend_for(self, model: str) -> DeploymentBackend: ...

    def describe(self) -> str: ...

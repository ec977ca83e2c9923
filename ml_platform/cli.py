"""Deployment commands: ``python -m ml_platform.cli status | rollback | stop``.

- ``status``: what serves where (backend, router, stable, canary) and the registry aliases.
- ``rollback``: one command back to ``previous_champion``: the alias ``champion``
  moves back, stable hot-swaps to it (local: ``/admin/reload``; kubernetes: the
  stable pods roll), the demoted version is tagged ``rolled_back_manually``.
  Waits for a rollout in progress to finish first (``--wait`` seconds).
- ``stop``: stop the local deployment (nginx and every serving process).

The deployer comes from the environment like the code location's
(``DEPLOYER_BACKEND``, ``DEPLOY_PUBLIC_PORT``, ...).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ml_platform.deployment.backend import DeploymentError
from ml_platform.deployment.deployer import Deployer
from ml_platform.deployment.state import DeploymentBusy
from ml_platform.spec import load_spec

STARTUP_TIMEOUT = 300.0


def _client() -> Any:
    from ml_platform.resources.mlflow_resources import MlflowRegistry

    return MlflowRegistry().client()


def _aliases(client: Any, name: str) -> dict[str, str | None]:
    from ml_platform.ml.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, PREVIOUS_CHAMPION_ALIAS, alias_version

    out = {}
    for alias in (CHAMPION_ALIAS, PREVIOUS_CHAMPION_ALIAS, CHALLENGER_ALIAS):
        found = alias_version(client, name, alias)
        out[alias] = str(found.version) if found is not None else None
    return out


def status(deployer: Deployer, name: str) -> int:
    backend = deployer.backend_for(name)
    try:
        for line in backend.status().lines():
            print(line)
    except DeploymentError as exc:
        print(f"deployment status unavailable: {exc}")
    client = _client()
    for alias, version in _aliases(client, name).items():
        print(f"{'@' + alias + ':':<20} {version or '-'}")
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))[-5:]
    for mv in versions:
        tags = mv.tags or {}
        print(
            f"v{mv.version}: validation {tags.get('validation_status', '-')}, deployment "
            f"{tags.get('deployment_status', '-')} {tags.get('deployment.reason', '')}".rstrip()
        )
    return 0


def rollback(deployer: Deployer, name: str, wait: float, reason: str) -> int:
    """Move ``champion`` back to ``previous_champion`` and make stable serve it."""
    from ml_platform.deployment.registry_ops import DEPLOYMENT_STATUS_TAG, iso, set_tags
    from ml_platform.ml.registry import CHAMPION_ALIAS, PREVIOUS_CHAMPION_ALIAS

    client = _client()
    aliases = _aliases(client, name)
    current, previous = aliases[CHAMPION_ALIAS], aliases[PREVIOUS_CHAMPION_ALIAS]
    if previous is None or current is None:
        print(f"nothing to roll back to: @champion={current}, @previous_champion={previous}", file=sys.stderr)
        return 2
    backend = deployer.backend_for(name)
    try:
        with backend.lock(wait):
            backend.retire_canary()
            client.set_registered_model_alias(name, CHAMPION_ALIAS, previous)
            client.delete_registered_model_alias(name, PREVIOUS_CHAMPION_ALIAS)
            try:
                if backend.status().stable_version is not None:
                    backend.serve_on_stable(previous, STARTUP_TIMEOUT)
                else:
                    print("no stable track is running: only the aliases moved")
            except DeploymentError:
                client.set_registered_model_alias(name, CHAMPION_ALIAS, current)
                client.set_registered_model_alias(name, PREVIOUS_CHAMPION_ALIAS, previous)
                raise
    except (DeploymentError, DeploymentBusy) as exc:
        print(f"rollback failed, aliases unchanged: {exc}", file=sys.stderr)
        return 1
    set_tags(
        client,
        name,
        current,
        {
            DEPLOYMENT_STATUS_TAG: "rolled_back_manually",
            "deployment.reason": reason,
            "deployment.decided_at": iso(),
            "deployment.replaced_by": previous,
        },
    )
    set_tags(client, name, previous, {"deployment.restored_at": iso()})
    print(f"{name}: champion v{current} -> v{previous} (stable serves v{previous})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_platform.cli", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="what is deployed, and the registry aliases")
    back = commands.add_parser("rollback", help="champion back to previous_champion, stable serves it")
    back.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a rollout in progress")
    back.add_argument("--reason", default="manual rollback", help="recorded on the demoted version")
    commands.add_parser("stop", help="stop the local deployment (nginx and serving processes)")
    args = parser.parse_args(argv)
    deployer = Deployer.from_env()
    name = load_spec().model.name
    if args.command == "status":
        return status(deployer, name)
    if args.command == "rollback":
        return rollback(deployer, name, args.wait, args.reason)
    try:
        deployer.backend_for(name).shutdown()
    except DeploymentError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"stopped the {deployer.backend} deployment of {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

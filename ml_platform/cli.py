"""Operator commands: ``python -m ml_platform.cli status | rollback | stop | retract | k8s-overlay [--model NAME]``.

Every command acts on one model (``--model``, default: ``ML_PLATFORM_MODEL`` or the
catalog's default model); ``status`` without ``--model`` lists every model.

- ``status``: what serves where (backend, router, stable, canary) and the registry aliases.
- ``rollback``: one command back to ``previous_champion``: the alias ``champion``
  moves back, stable hot-swaps to it (local: ``/admin/reload``; kubernetes: the
  stable pods roll), the demoted version is tagged ``rolled_back_manually``.
  Waits for a rollout in progress to finish first (``--wait`` seconds).
- ``stop``: stop the model's local deployment (its serving processes; its routes leave
  the shared nginx, which stops once no model is left).
- ``retract``: take accepted batches out of training (``accepted/`` -> ``retracted/`` with a
  reason record), by partition key or ``--trained-into VERSION`` (every batch that version
  trained on); the next training dataset leaves them out. Every key is checked first: one bad
  key retracts nothing (exit code 2).
- ``k8s-overlay``: write ``deploy/k8s/models/<name>/kustomization.yaml``, the model's
  Kubernetes overlay (object names prefixed by the model, its label and environment).

``rollback`` and ``stop`` take the model's deployment lock (the one its rollout holds;
other models' rollouts are not waited for).
When it is held they refuse (exit code 3) naming the holder (what, pid, host,
since when); a lock whose holder process is gone is stale and is broken with
a notice; ``--force`` breaks a live holder's lock and says what that leaves.

The deployer comes from the environment like the code location's
(``DEPLOYER_BACKEND``, ``DEPLOY_PUBLIC_PORT``, ...).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_platform.catalog import CatalogError, ModelEntry, get_model, list_models
from ml_platform.deployment.backend import DeploymentError
from ml_platform.deployment.deployer import AnyDeployer, deployer_from_env
from ml_platform.deployment.state import DeploymentBusy

STARTUP_TIMEOUT = 300.0
EXIT_LOCKED = 3

FORCE_CONSEQUENCES = {
    "stop": (
        "it keeps running without the lock: a rollout in progress finds its processes gone at its next step, "
        "ends failed or rejected (it restores any alias it moved) and may leave a process it was starting; "
        "run `stop` again once it has ended"
    ),
    "rollback": (
        "it keeps running beside this rollback: a rollout in progress may still promote its version "
        "afterwards; check `status` once it has ended"
    ),
}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _announce_force(backend: Any, command: str) -> None:
    """Before breaking the lock with --force: say whose lock it is and what breaking it leaves."""
    holder_of = getattr(backend, "lock_holder", None)
    holder = holder_of() if holder_of is not None else None
    if holder is None:
        return
    if holder.alive() is False:
        _stderr(f"--force: the lock holder is already gone (stale lock): {holder.describe()}")
        return
    _stderr(f"--force: breaking the deployment lock held by {holder.describe()}; {FORCE_CONSEQUENCES[command]}")


def _refuse(command: str, exc: DeploymentBusy) -> int:
    _stderr(
        f"{command} refused: {exc}. Wait for it to finish (or pass --wait SECONDS), or break the lock with "
        f"--force if that operation is stuck ({FORCE_CONSEQUENCES[command].split(':')[0]})."
    )
    return EXIT_LOCKED


def _client() -> Any:
    from ml_platform.ml.mlflow_store import MlflowStore

    return MlflowStore().client()


def _aliases(client: Any, name: str) -> dict[str, str | None]:
    from ml_platform.ml.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, PREVIOUS_CHAMPION_ALIAS, alias_version

    out = {}
    for alias in (CHAMPION_ALIAS, PREVIOUS_CHAMPION_ALIAS, CHALLENGER_ALIAS):
        found = alias_version(client, name, alias)
        out[alias] = str(found.version) if found is not None else None
    return out


def status(deployer: AnyDeployer, model: str) -> int:
    """What serves ``model`` where, its aliases and its last versions."""
    backend = deployer.backend_for(model)
    name = backend.model_name
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


def rollback(deployer: AnyDeployer, model: str, wait: float, reason: str, force: bool = False) -> int:
    """Move ``model``'s ``champion`` back to ``previous_champion`` and make stable serve it (under its lock)."""
    from ml_platform.deployment.registry_ops import DEPLOYMENT_STATUS_TAG, iso, set_tags
    from ml_platform.deployment.rollout_state import store_for
    from ml_platform.ml.registry import CHAMPION_ALIAS, PREVIOUS_CHAMPION_ALIAS

    name = get_model(model).spec.model.name
    client = _client()
    aliases = _aliases(client, name)
    current, previous = aliases[CHAMPION_ALIAS], aliases[PREVIOUS_CHAMPION_ALIAS]
    if previous is None or current is None:
        print(f"nothing to roll back to: @champion={current}, @previous_champion={previous}", file=sys.stderr)
        return 2
    backend = deployer.backend_for(model)
    if force:
        _announce_force(backend, "rollback")
    try:
        with backend.lock(
            wait, holder="manual rollback (python -m ml_platform.cli rollback)", force=force, log=_stderr
        ):
            aliases = _aliases(client, name)  # again, under the lock: a rollout may have moved them meanwhile
            current, previous = aliases[CHAMPION_ALIAS], aliases[PREVIOUS_CHAMPION_ALIAS]
            if previous is None or current is None:
                _stderr(f"nothing to roll back to: @champion={current}, @previous_champion={previous}")
                return 2
            backend.retire_canary()
            store_for(backend).clear(model)  # the operator took over: no half-way rollout is resumed after this
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
    except DeploymentBusy as exc:
        return _refuse("rollback", exc)
    except DeploymentError as exc:
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
    print(f"{model} ({name}): champion v{current} -> v{previous} (stable serves v{previous})")
    return 0


def _model_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--model", help=help_text)


def _entry(model: str | None) -> ModelEntry:
    try:
        return get_model(model)
    except CatalogError as exc:
        raise SystemExit(f"error: {exc}") from None


def status_all(deployer: AnyDeployer) -> int:
    """``status`` of every model of the catalog, one block each."""
    code = 0
    for index, entry in enumerate(list_models()):
        if index:
            print()
        print(f"== {entry.name}{' (default: unprefixed paths)' if entry.default else ''}")
        code = max(code, status(deployer, entry.name))
    return code


def retract(model: str, keys: Sequence[str], reason: str, trained_into: str | None, actor: str | None) -> int:
    """Retract ``keys`` (and every batch ``trained_into`` trained on) of ``model``; 2 when refused."""
    from ml_platform.validation.landing_zone import LandingZone
    from ml_platform.validation.retraction import (
        RetractionError,
        default_actor,
        retract_batches,
        tag_version,
        training_batches,
    )

    entry = _entry(model)
    zone = LandingZone().for_model(entry.name)
    wanted = list(keys)
    client = None
    try:
        if trained_into:
            client = _client()
            found = training_batches(client, entry.spec.model.name, trained_into)
            print(f"{entry.spec.model.name} v{trained_into} trained on {len(found)} batch(es)")
            wanted += found
        records = retract_batches(zone, wanted, reason, actor=actor or default_actor("cli"), version=trained_into)
    except (RetractionError, ValueError) as exc:  # InvalidKeyError and UnknownBatchError included
        _stderr(f"retract refused: {exc}")
        return 2
    for record in records:
        if record.already_retracted:
            print(f"already retracted {record.key} ({record.retracted_at} by {record.actor}: {record.reason})")
        else:
            print(f"retracted {record.key} -> {record.path}")
    if trained_into and client is not None:
        tag_version(client, entry.spec.model.name, trained_into, records)
    moved = sum(not r.already_retracted for r in records)
    print(
        f"{moved} batch(es) retracted, {len(records) - moved} already were; the next {entry.name} training "
        f"run leaves them out (records in {zone.retracted_dir})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_platform.cli", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    status_cmd = commands.add_parser("status", help="what is deployed, and the registry aliases")
    _model_option(status_cmd, "one model (default: every model)")
    back = commands.add_parser("rollback", help="champion back to previous_champion, stable serves it")
    _model_option(back, "the model (default: ML_PLATFORM_MODEL, else the default model)")
    back.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a rollout in progress")
    back.add_argument("--reason", default="manual rollback", help="recorded on the demoted version")
    back.add_argument("--force", action="store_true", help="break the deployment lock if another operation holds it")
    stop_cmd = commands.add_parser("stop", help="stop a model's local deployment (its serving processes and routes)")
    _model_option(stop_cmd, "the model (default: ML_PLATFORM_MODEL, else the default model)")
    stop_cmd.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the deployment lock")
    stop_cmd.add_argument("--force", action="store_true", help="break the deployment lock (stop a rollout's processes)")
    retract_cmd = commands.add_parser("retract", help="take accepted batches out of training, with a reason")
    _model_option(retract_cmd, "the model (default: ML_PLATFORM_MODEL, else the default model)")
    retract_cmd.add_argument("keys", nargs="*", metavar="KEY", help="partition keys `<file name>@<sha256>`")
    retract_cmd.add_argument("--reason", required=True, help="why (recorded beside the batch)")
    retract_cmd.add_argument("--trained-into", metavar="VERSION", help="also every batch this model version trained on")
    retract_cmd.add_argument("--actor", help="who retracts (default: cli:<OS user>)")
    overlay = commands.add_parser("k8s-overlay", help="write deploy/k8s/models/<name>/kustomization.yaml")
    _model_option(overlay, "the model (default: ML_PLATFORM_MODEL, else the default model)")
    overlay.add_argument("--routing", choices=("gateway-api", "ingress-nginx"), default="gateway-api")
    overlay.add_argument("--out", help="folder to write into (default deploy/k8s/models/<name>)")
    new_model = commands.add_parser("scaffold-model", help="write defs/models/<name>/ templates (docs/models.md)")
    new_model.add_argument("name", help="model name: lowercase letters, digits, _ (starting with a letter)")
    args = parser.parse_args(argv)
    if args.command == "scaffold-model":  # onboarding (ml_platform.onboarding); needs no deployer
        from ml_platform.onboarding import run

        return run("scaffold", None, name=args.name)
    if args.command == "retract":  # the landing zone (and the registry for --trained-into); no deployer
        if not args.keys and not args.trained_into:
            parser.error("retract: give at least one KEY or --trained-into VERSION")
        return retract(args.model, args.keys, args.reason, args.trained_into, args.actor)
    if args.command == "k8s-overlay":
        from ml_platform.deployment.k8s_overlay import write_overlay

        entry = _entry(args.model)
        path = write_overlay(entry, args.routing, Path(args.out) if args.out else None)
        print(f"wrote {path}: kubectl apply -k {path.parent}")
        return 0
    try:
        deployer = deployer_from_env()
    except DeploymentError as exc:
        _stderr(str(exc))
        return 2
    if args.command == "status":
        return status(deployer, _entry(args.model).name) if args.model else status_all(deployer)
    model = _entry(args.model).name
    if args.command == "rollback":
        return rollback(deployer, model, args.wait, args.reason, args.force)
    return stop(deployer, model, args.wait, args.force)


def stop(deployer: AnyDeployer, model: str, wait: float, force: bool) -> int:
    """Stop ``model``'s serving processes and take it off the router, under its deployment lock."""
    backend = deployer.backend_for(model)
    if force:
        _announce_force(backend, "stop")
    try:
        with backend.lock(wait, holder="stop (python -m ml_platform.cli stop)", force=force, log=_stderr):
            backend.shutdown()
    except DeploymentBusy as exc:
        return _refuse("stop", exc)
    except DeploymentError as exc:
        _stderr(str(exc))
        return 1
    print(f"stopped the {deployer.kind} deployment of {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Registry bookkeeping of deployments: which versions wait, aliases, and the tags of every decision.

Tags written on a model version (beside ``validation_status``):

- ``deployment_status``: ``in_progress``, ``promoted``, ``rejected``,
  ``superseded``, ``failed`` (an error, not a verdict), ``refused`` (a webhook
  said no, not a verdict on the model), ``rolled_back_manually``
- ``rejected_reason``: why a rejected version was rejected (a rejected version
  also loses the ``challenger`` alias)
- ``deployment.reason``, ``deployment.decided_at`` (ISO time), ``deployment.dagster_run_id``
- ``deployment.step_<n>``: weight, verdict and measurements of step n
- ``deployment.decision_overhead_seconds``: validated -> decision, minus the pauses
- ``deployment.replaced_by`` / ``deployment.previous_champion``
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from ml_platform.ml.registry import (
    CHAMPION_ALIAS,
    PREVIOUS_CHAMPION_ALIAS,
    VALIDATION_STATUS_TAG,
    alias_version,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEPLOYMENT_STATUS_TAG = "deployment_status"
VALIDATED_AT_TAG = "validated_at"
TAG_VALUE_LIMIT = 4000


def iso(epoch: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch is None else epoch))


def set_tags(client: MlflowClient, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value)[:TAG_VALUE_LIMIT])


def is_validated(model_version: Any) -> bool:
    return (model_version.tags or {}).get(VALIDATION_STATUS_TAG) == "passed"


def validated_versions(client: MlflowClient, name: str) -> list[Any]:
    """Every version of ``name`` that passed the training gates, oldest first."""
    versions = client.search_model_versions(f"name='{name}'")
    return sorted((v for v in versions if is_validated(v)), key=lambda v: int(v.version))


def waiting_versions(client: MlflowClient, name: str) -> list[Any]:
    """Validated versions newer than the champion with no deployment decision yet, oldest first."""
    champion = alias_version(client, name, CHAMPION_ALIAS)
    floor = int(champion.version) if champion is not None else 0
    return [
        v
        for v in validated_versions(client, name)
        if int(v.version) > floor and not (v.tags or {}).get(DEPLOYMENT_STATUS_TAG)
    ]


def validated_at(model_version: Any) -> float | None:
    """When the version was marked validated: its ``validated_at`` tag (epoch seconds), if any."""
    raw = (model_version.tags or {}).get(VALIDATED_AT_TAG)
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def move_champion(client: MlflowClient, name: str, version: str) -> str | None:
    """``champion`` -> ``version``; the old champion becomes ``previous_champion``. Returns the old one."""
    old = alias_version(client, name, CHAMPION_ALIAS)
    if old is not None and str(old.version) != str(version):
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION_ALIAS, str(old.version))
    client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
    return str(old.version) if old is not None else None


def drop_alias_if(client: MlflowClient, name: str, alias: str, version: str) -> bool:
    """Delete ``alias`` when it points at ``version`` (a rejected version loses ``challenger``)."""
    current = alias_version(client, name, alias)
    if current is None or str(current.version) != str(version):
        return False
    client.delete_registered_model_alias(name, alias)
    return True


def restore_champion(client: MlflowClient, name: str, version: str | None, previous: str | None) -> None:
    """Put the aliases back as they were before :func:`move_champion`."""
    if version is None:
        client.delete_registered_model_alias(name, CHAMPION_ALIAS)
    else:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    if previous is None:
        with contextlib.suppress(Exception):  # not set
            client.delete_registered_model_alias(name, PREVIOUS_CHAMPION_ALIAS)
    else:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION_ALIAS, previous)

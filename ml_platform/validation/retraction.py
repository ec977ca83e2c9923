"""Retract landed batches of one model: by partition key, or every batch a model version trained on.

Plain Python, shared by ``python -m ml_platform.cli retract`` and the ``<model>_retract_batch_job``
Dagster job. A retraction moves ``accepted/<batch>`` to ``retracted/<batch>`` beside a
``.retraction.json`` record (see :meth:`ml_platform.validation.landing.LandingFolders.retract`);
``training_dataset`` reads ``accepted/`` only, so the next training dataset leaves the batch out
and its data version changes by itself.

Every key is validated (and found) before anything moves: one bad key in a list retracts nothing.
"""

from __future__ import annotations

import getpass
import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from ml_platform.validation.landing import RetractionError, RetractionRecord, UnknownBatchError, clean_reason
from ml_platform.validation.landing_zone import ModelLandingZone
from ml_platform.validation.names import InvalidKeyError, split_partition_key

TRAINING_BATCHES_ARTIFACT = "training_batches.json"
RETRACTED_TAG = "data.retracted_batches"
RETRACTED_AT_TAG = "data.retracted_at"
RETRACTED_REASON_TAG = "data.retraction_reason"

__all__ = [
    "InvalidKeyError",
    "RetractionError",
    "RetractionRecord",
    "UnknownBatchError",
    "default_actor",
    "retract_batches",
    "tag_version",
    "training_batches",
]


def default_actor(via: str) -> str:
    """Who retracts, as recorded: ``<via>:<OS user>`` (e.g. ``cli:alice``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{via}:{user}"


def _keys_of_artifact(data: Any, source: str) -> list[str]:
    if not isinstance(data, list):
        raise RetractionError(f"{source} is not a list of batches")
    keys = []
    for item in data:
        key = item.get("key") if isinstance(item, dict) else None
        if not isinstance(key, str):
            raise RetractionError(f"{source} holds an entry without a string 'key': {str(item)[:200]}")
        keys.append(key)
    return keys


def training_batches(client: Any, model_name: str, version: str) -> list[str]:
    """The partition keys of the batches ``model_name`` version ``version`` trained on.

    Uses ``ml_platform.ml.registry.training_batches`` when the registry module provides it;
    otherwise reads the version's run artifact ``training_batches.json`` itself
    (``[{"key": ..., "sha256": ..., "rows": N}, ...]``). :class:`RetractionError` when the
    version is unknown or has no such record (registered before versions recorded their batches).
    """
    from ml_platform.ml import registry

    reader = getattr(registry, "training_batches", None)
    if reader is not None:
        return list(reader(client, model_name, version))
    from mlflow.exceptions import MlflowException

    try:
        model_version = client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        raise RetractionError(f"{model_name} has no version {version!r}: {exc.message}") from exc
    source = f"{TRAINING_BATCHES_ARTIFACT} of {model_name} v{version} (run {model_version.run_id})"
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(model_version.run_id, TRAINING_BATCHES_ARTIFACT, folder)
        except (MlflowException, OSError) as exc:
            raise RetractionError(
                f"{model_name} v{version} records no training batches ({source} is missing); it was registered "
                "before versions recorded them: retract its batches by key instead"
            ) from exc
        try:
            with open(path) as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise RetractionError(f"{source} cannot be read: {exc}") from exc
    return _keys_of_artifact(data, source)


def retract_batches(
    zone: ModelLandingZone,
    keys: Sequence[str],
    reason: str,
    *,
    actor: str,
    version: str | None = None,
) -> list[RetractionRecord]:
    """Retract every batch of ``keys`` (all validated and found first; nothing moves if one is wrong).

    Raises :class:`InvalidKeyError` (a key the landing zone never produced, e.g. ``../x``),
    :class:`UnknownBatchError` (no such accepted batch) or :class:`RetractionError` (no keys, no reason),
    naming every offending key.
    """
    clean_reason(reason)
    unique = list(dict.fromkeys(keys))
    if not unique:
        raise RetractionError("no batch to retract: give partition keys (`<file name>@<sha256>`) or a version")
    invalid, unknown = [], []
    for key in unique:
        try:
            split_partition_key(key)
            zone.folders.retractable(key)
        except InvalidKeyError as exc:
            invalid.append(str(exc))
        except UnknownBatchError as exc:
            unknown.append(str(exc))
    if invalid:
        raise InvalidKeyError("refused, nothing retracted: " + " | ".join(invalid))
    if unknown:
        raise UnknownBatchError("nothing retracted: " + " | ".join(unknown))
    return [zone.retract(key, reason, actor=actor, version=version) for key in unique]


def tag_version(client: Any, model_name: str, version: str, records: Sequence[RetractionRecord]) -> None:
    """Record on the model version that its training batches were retracted (count, time, reason)."""
    if not records:
        return
    client.set_model_version_tag(model_name, str(version), RETRACTED_TAG, str(len(records)))
    client.set_model_version_tag(model_name, str(version), RETRACTED_AT_TAG, records[-1].retracted_at)
    client.set_model_version_tag(model_name, str(version), RETRACTED_REASON_TAG, records[-1].reason[:500])

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
import os
from collections.abc import Sequence
from typing import Any

from ml_platform.validation.landing import RetractionError, RetractionRecord, UnknownBatchError, clean_reason
from ml_platform.validation.landing_zone import ModelLandingZone
from ml_platform.validation.names import InvalidKeyError, split_partition_key

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


def training_batches(client: Any, model_name: str, version: str) -> list[str]:
    """The partition keys of the batches ``model_name`` version ``version`` trained on.

    Read through :func:`ml_platform.ml.registry.training_batches` (the version's run artifact
    ``training_batches.json``). :class:`RetractionError` when the version is unknown or records no
    batches (registered before versions recorded them).
    """
    from mlflow.exceptions import MlflowException

    from ml_platform.ml.registry import TRAINING_BATCHES_ARTIFACT
    from ml_platform.ml.registry import training_batches as recorded_batches

    try:
        keys = recorded_batches(client, model_name, str(version))
    except MlflowException as exc:
        raise RetractionError(f"{model_name} has no version {version!r}: {exc.message}") from exc
    if not keys:
        raise RetractionError(
            f"{model_name} v{version} records no training batches ({TRAINING_BATCHES_ARTIFACT} is missing); it was "
            "registered before versions recorded them: retract its batches by key instead"
        )
    return keys


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

"""The landing zone of every model: incoming, accepted and quarantined data files, per model.

Plain Python (the Dagster resource in ``ml_platform.defs.resources`` is a thin wrapper).
:class:`LandingZone` knows the platform home; :meth:`LandingZone.for_model` gives the
:class:`ModelLandingZone` of one model, whose folders live under ``<home>/data/<model>/``.
Files land in ``incoming/``. The batch gate copies each one into ``staging/`` (never
following a link), validates the copy and moves it to ``accepted/`` or ``quarantine/`` (with
a JSON and a markdown report beside it), stored as ``<stem>@<sha256><suffix>``. Partition keys
are ``<name>@<sha256>`` and are validated before any path is built from them.
:meth:`ModelLandingZone.retract` moves an accepted batch to ``retracted/`` with a reason record.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ml_platform import settings
from ml_platform.spec import DatasetSpec
from ml_platform.validation.landing import (
    LandedFile,
    LandingFolders,
    RetractionError,
    RetractionRecord,
    UnknownBatchError,
    is_ignored_name,
)
from ml_platform.validation.names import (
    PARTITION_SEPARATOR,
    InvalidKeyError,
    partition_key_for,
    split_partition_key,
    stored_name,
)

__all__ = [
    "PARTITION_SEPARATOR",
    "InvalidKeyError",
    "LandedFile",
    "LandingZone",
    "ModelLandingZone",
    "RetractionError",
    "RetractionRecord",
    "UnknownBatchError",
    "partition_key_for",
    "split_partition_key",
    "stored_name",
]

DEFAULT_SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class ModelLandingZone:
    """One model's landing folders (``<home>/data/<model>/``)."""

    model: str
    data_dir: Path
    settle_seconds: float = DEFAULT_SETTLE_SECONDS

    @property
    def folders(self) -> LandingFolders:
        """The folder logic of the batch gate (pending, locate, stage, store)."""
        return LandingFolders(self.data_dir, self.settle_seconds)

    @property
    def incoming_dir(self) -> Path:
        return self.folders.incoming_dir

    @property
    def accepted_dir(self) -> Path:
        return self.folders.accepted_dir

    @property
    def quarantine_dir(self) -> Path:
        return self.folders.quarantine_dir

    @property
    def datasets_dir(self) -> Path:
        """Where combined training datasets (Parquet, named by content hash) are written."""
        path = self.data_dir / "training_datasets"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def retracted_dir(self) -> Path:
        """Retracted batches, each beside its ``.retraction.json`` record."""
        return self.folders.retracted_dir

    def retract(self, key: str, reason: str, *, actor: str, version: str | None = None) -> RetractionRecord:
        """Take an accepted batch out of training: ``accepted/`` -> ``retracted/`` with a reason record.

        ``key`` is the batch's partition key (``<file name>@<sha256>``), validated like every key
        (:class:`InvalidKeyError`); :class:`UnknownBatchError` when no such batch was accepted.
        Idempotent; nothing is deleted. ``version``: the model version that prompted it, if any.
        """
        return self.folders.retract(key, reason, actor=actor, version=version)

    def retraction_of(self, key: str) -> RetractionRecord | None:
        """The retraction record of ``key``, or None when it was never retracted."""
        return self.folders.retraction_of(key)

    def pending_files(self) -> list[LandedFile]:
        """Settled entries in incoming/, oldest first, with their keys' hashes (links never followed)."""
        return self.folders.pending()

    def locate(self, key: str) -> LandedFile:
        """The entry behind a (validated) partition key, wherever the gate has put it."""
        return self.folders.locate(key)

    def accepted_files(self) -> list[Path]:
        """Every accepted file, in a stable order."""
        return self.folders.accepted_files()

    def is_empty(self) -> bool:
        """True when nothing has ever landed for this model."""
        folders = self.folders
        return not any(
            any(not is_ignored_name(name) for name in os.listdir(folder))
            for folder in (folders.incoming_dir, folders.accepted_dir, folders.quarantine_dir, folders.retracted_dir)
        )

    def bootstrap(self, spec: DatasetSpec) -> Path | None:
        """On a fresh home, land the spec's bundled data as the model's first batch."""
        source = spec.bootstrap_path()
        if source is None or not source.exists() or not self.is_empty():
            return None
        target = self.incoming_dir / source.name
        shutil.copyfile(source, target)
        old = time.time() - max(self.settle_seconds, 0) - 1
        os.utime(target, (old, old))  # a bundled file is complete: no need to wait for it to settle
        return target


@dataclass(frozen=True)
class LandingZone:
    """The landing zones of all models under one platform home."""

    home: Path | None = None
    settle_seconds: float = DEFAULT_SETTLE_SECONDS

    def paths(self) -> settings.PlatformPaths:
        return settings.PlatformPaths(self.home.resolve()) if self.home else settings.platform_paths()

    def for_model(self, model: str) -> ModelLandingZone:
        """The landing folders of ``model`` (a catalog model name)."""
        return ModelLandingZone(model, self.paths().data_dir(model), self.settle_seconds)

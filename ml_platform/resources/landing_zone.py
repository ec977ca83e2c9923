"""The landing zone resource: incoming, accepted and quarantined data files of a dataset.

A thin Dagster wrapper over :class:`ml_platform.validation.landing.LandingFolders`.
Files land in ``incoming/``. The batch gate copies each one into ``staging/``
(never following a link), validates the copy and moves it to ``accepted/`` or
to ``quarantine/`` (with a JSON and a markdown report beside it), stored as
``<stem>@<sha256><suffix>`` so a second file with the same name never
overwrites the first. Partition keys are ``<name>@<sha256>`` and are
validated before any path is built from them.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from ml_platform import settings
from ml_platform.spec import DatasetSpec, load_spec
from ml_platform.validation.landing import LandedFile, LandingFolders, is_ignored_name
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
    "partition_key_for",
    "split_partition_key",
    "stored_name",
]


class LandingZone(dg.ConfigurableResource):
    """Local folders under the platform home holding one dataset's data files."""

    home: str | None = Field(default=None, description="Platform home; default ML_PLATFORM_HOME or .ml_platform/")
    dataset: str | None = Field(default=None, description="Dataset name; default ML_PLATFORM_DATASET or iris")
    settle_seconds: float = Field(
        default=2.0, description="Ignore incoming files modified more recently than this (still being written)"
    )

    def _paths(self) -> settings.PlatformPaths:
        return settings.PlatformPaths(Path(self.home).resolve()) if self.home else settings.platform_paths()

    @property
    def dataset_name(self) -> str:
        return self.dataset or load_spec().name

    @property
    def folders(self) -> LandingFolders:
        """The plain landing-zone implementation behind this resource."""
        return LandingFolders(self._paths().data_dir(self.dataset_name), self.settle_seconds)

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
        path = self._paths().data_dir(self.dataset_name) / "training_datasets"
        path.mkdir(parents=True, exist_ok=True)
        return path

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
        """True when nothing has ever landed for this dataset."""
        folders = self.folders
        return not any(
            any(not is_ignored_name(name) for name in os.listdir(folder))
            for folder in (folders.incoming_dir, folders.accepted_dir, folders.quarantine_dir)
        )

    def bootstrap(self, spec: DatasetSpec) -> Path | None:
        """On a fresh home, land the spec's bundled data as the first batch."""
        source = spec.bootstrap_path()
        if source is None or not source.exists() or not self.is_empty():
            return None
        target = self.incoming_dir / source.name
        shutil.copyfile(source, target)
        old = time.time() - max(self.settle_seconds, 0) - 1
        os.utime(target, (old, old))  # a bundled file is complete: no need to wait for it to settle
        return target

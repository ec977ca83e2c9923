"""The landing zone: incoming, accepted and quarantined data files of a dataset.

Files land in ``incoming/``. The batch gate moves each one to ``accepted/`` or
to ``quarantine/`` (with a JSON and a markdown report beside it). Nothing is
ever deleted. Processed files are stored as ``<stem>@<sha12><suffix>`` so a
second file with the same name never overwrites the first.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from ml_platform import settings
from ml_platform.spec import DatasetSpec, load_spec

PARTITION_SEPARATOR = "@"
SHORT_HASH_LENGTH = 12
_TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")


@dataclass(frozen=True)
class LandedFile:
    """A file in the landing zone and the partition key it maps to."""

    path: Path
    sha256: str

    @property
    def partition_key(self) -> str:
        return partition_key_for(self.path.name, self.sha256)


def partition_key_for(file_name: str, sha256: str) -> str:
    """Stable partition key of a landed file: its name plus a content-hash prefix."""
    return f"{file_name}{PARTITION_SEPARATOR}{sha256[:SHORT_HASH_LENGTH]}"


def split_partition_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`partition_key_for`: ``(file_name, short_hash)``."""
    name, sep, short_hash = key.rpartition(PARTITION_SEPARATOR)
    if not sep or not name:
        raise ValueError(f"not a landed-file partition key: {key!r}")
    return name, short_hash


def stored_name(key: str) -> str:
    """File name of a processed file in accepted/ or quarantine/."""
    name, short_hash = split_partition_key(key)
    path = Path(name)
    return f"{path.stem}{PARTITION_SEPARATOR}{short_hash}{path.suffix}"


def is_candidate_file(path: Path) -> bool:
    """Whether a file in incoming/ is ready to be picked up (not hidden or partial)."""
    return path.is_file() and not path.name.startswith((".", "_")) and not path.name.endswith(_TEMPORARY_SUFFIXES)


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
    def incoming_dir(self) -> Path:
        return self._ensure(self._paths().incoming_dir(self.dataset_name))

    @property
    def accepted_dir(self) -> Path:
        return self._ensure(self._paths().accepted_dir(self.dataset_name))

    @property
    def quarantine_dir(self) -> Path:
        return self._ensure(self._paths().quarantine_dir(self.dataset_name))

    @property
    def datasets_dir(self) -> Path:
        return self._ensure(self._paths().data_dir(self.dataset_name) / "training_datasets")

    @staticmethod
    def _ensure(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pending_files(self) -> list[LandedFile]:
        """Settled files in incoming/, oldest first, with their content hashes."""
        from ml_platform.validation.reader import file_sha256

        now = time.time()
        files = []
        for path in self.incoming_dir.iterdir():
            if not is_candidate_file(path):
                continue
            if now - path.stat().st_mtime < self.settle_seconds:
                continue
            files.append(LandedFile(path, file_sha256(path)))
        return sorted(files, key=lambda f: (f.path.stat().st_mtime, f.path.name))

    def locate(self, key: str) -> Path:
        """Find the file behind a partition key, wherever the gate has put it."""
        from ml_platform.validation.reader import file_sha256

        name, short_hash = split_partition_key(key)
        incoming = self.incoming_dir / name
        if incoming.is_file() and file_sha256(incoming).startswith(short_hash):
            return incoming
        for folder in (self.accepted_dir, self.quarantine_dir):
            candidate = folder / stored_name(key)
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"no file for partition {key!r} in {self.incoming_dir}, {self.accepted_dir} or {self.quarantine_dir}"
        )

    def accept(self, path: Path, key: str) -> Path:
        """Move a file that passed the gate to accepted/."""
        return self._move(path, self.accepted_dir / stored_name(key))

    def quarantine(self, path: Path, key: str, report_json: str, report_markdown: str) -> Path:
        """Move a rejected file to quarantine/ and write its report beside it."""
        target = self._move(path, self.quarantine_dir / stored_name(key))
        target.with_name(target.name + ".report.json").write_text(report_json)
        target.with_name(target.name + ".report.md").write_text(report_markdown)
        return target

    @staticmethod
    def _move(source: Path, target: Path) -> Path:
        if source.resolve() == target.resolve():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # os.replace is atomic on one filesystem; shutil.move copies across filesystems.
        try:
            os.replace(source, target)
        except OSError:
            shutil.move(str(source), str(target))
        return target

    def accepted_files(self) -> list[Path]:
        """Every accepted file, in a stable order."""
        return sorted(p for p in self.accepted_dir.iterdir() if p.is_file() and not p.name.startswith("."))

    def is_empty(self) -> bool:
        """True when nothing has ever landed for this dataset."""
        return not any(
            any(is_candidate_file(p) for p in folder.iterdir())
            for folder in (self.incoming_dir, self.accepted_dir, self.quarantine_dir)
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

"""The landing zone's folders and the moves between them (plain Python, no Dagster).

``incoming/`` is untrusted: anyone may drop anything there. Every entry is
looked at with ``lstat`` only; a regular file is opened without following
links and copied into the private ``staging/`` folder, hashed from the bytes
copied. Only that copy is validated and then moved (renamed, never linked) to
``accepted/`` or ``quarantine/`` under ``<stem>@<sha256><suffix>``. Links,
FIFOs, directories and devices are never opened: they are renamed into
``quarantine/`` as they are, with a report. Nothing is deleted except an
incoming file whose exact content has been stored.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ml_platform.validation.names import (
    InvalidKeyError,
    name_problems,
    partition_key_for,
    safe_name,
    split_partition_key,
    stored_hash,
    stored_name,
)
from ml_platform.validation.safe_io import Copied, NotRegularFileError, copy_and_hash, entry_kind, read_verified

TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
REPORT_SUFFIXES = (".report.json", ".report.md")


def is_ignored_name(name: str) -> bool:
    """Hidden, private (``_``) and partial uploads are never picked up."""
    return name.startswith((".", "_")) or name.endswith(TEMPORARY_SUFFIXES)


@dataclass(frozen=True)
class LandedFile:
    """An entry of incoming/ (or a stored file) and the partition key it maps to.

    ``sha256`` is the content hash of a regular file; for anything else (never opened) it is a
    hash of what ``lstat`` says about the entry, so the key is still unique and stable.
    """

    path: Path
    sha256: str
    kind: str = "file"
    mtime: float = 0.0
    size_bytes: int = 0

    @property
    def partition_key(self) -> str:
        return partition_key_for(self.path.name, self.sha256)

    @property
    def name_problems(self) -> list[str]:
        return name_problems(self.path.name)


@dataclass
class Staged:
    """A private copy of a landed file, ready to validate."""

    landed: LandedFile
    copy: Copied
    problems: list[str] = field(default_factory=list)


def _identity_hash(path: Path, st: os.stat_result, kind: str) -> str:
    text = f"{kind}\0{path.name}\0{st.st_dev}\0{st.st_ino}\0{st.st_mtime_ns}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _inside(folder: Path, path: Path) -> bool:
    """``path`` is a direct child of ``folder``, also once both are resolved (no escape by name)."""
    return path.name not in ("", ".", "..") and os.path.realpath(path.parent) == os.path.realpath(folder)


class LandingFolders:
    """incoming/, staging/, accepted/ and quarantine/ of one dataset."""

    def __init__(self, data_dir: Path, settle_seconds: float = 2.0) -> None:
        self.data_dir = data_dir
        self.settle_seconds = settle_seconds

    def _folder(self, name: str) -> Path:
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def incoming_dir(self) -> Path:
        return self._folder("incoming")

    @property
    def accepted_dir(self) -> Path:
        return self._folder("accepted")

    @property
    def quarantine_dir(self) -> Path:
        return self._folder("quarantine")

    @property
    def staging_dir(self) -> Path:
        return self._folder("staging")

    def describe(self, path: Path) -> LandedFile:
        """What ``path`` is (``lstat``: a link is described, not followed) and its key's hash."""
        st = path.lstat()
        kind = entry_kind(st.st_mode)
        if kind == "file":
            try:
                from ml_platform.validation.safe_io import hash_file

                return LandedFile(path, hash_file(path), "file", st.st_mtime, st.st_size)
            except NotRegularFileError:  # swapped for a link or pipe since lstat
                return self.describe(path)
            except PermissionError:
                kind = "unreadable"
        return LandedFile(path, _identity_hash(path, st, kind), kind, st.st_mtime, 0)

    def pending(self, now: float | None = None) -> list[LandedFile]:
        """Settled entries of incoming/, oldest first (files hashed; nothing else is opened)."""
        import time

        now = time.time() if now is None else now
        found = []
        incoming = self.incoming_dir
        with os.scandir(incoming) as entries:
            for entry in entries:
                if is_ignored_name(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                    if now - st.st_mtime < self.settle_seconds:
                        continue
                    found.append(self.describe(incoming / entry.name))
                except FileNotFoundError:
                    continue  # taken by a concurrent run
        return sorted(found, key=lambda f: (f.mtime, f.path.name))

    def locate(self, key: str) -> LandedFile:
        """The entry behind a partition key: in incoming/ first, then accepted/ or quarantine/.

        The key is validated before any path is built from it (:class:`InvalidKeyError`), and
        the entry must have exactly the key's hash.
        """
        name, digest = split_partition_key(key)
        incoming = self.incoming_dir
        candidates = [incoming / name]
        if not (incoming / name).exists() and not os.path.lexists(incoming / name):
            # a file landed under an unsafe name is keyed by its safe name: find it by that
            with os.scandir(incoming) as entries:
                candidates += [incoming / e.name for e in entries if e.name != name and safe_name(e.name) == name]
        for path in candidates:
            if not _inside(incoming, path) or not os.path.lexists(path):
                continue
            described = self.describe(path)
            if described.sha256 == digest:
                return described
        for folder in (self.accepted_dir, self.quarantine_dir):
            path = folder / stored_name(key)
            if _inside(folder, path) and os.path.lexists(path):
                st = path.lstat()
                return LandedFile(path, digest, entry_kind(st.st_mode), st.st_mtime, st.st_size)
        raise FileNotFoundError(
            f"no entry for partition {key!r} in {incoming}, {self.accepted_dir} or {self.quarantine_dir} "
            "(with exactly that content hash)"
        )

    def stage(self, landed: LandedFile) -> Staged:
        """Copy a regular file into staging/, hashing the bytes copied."""
        target = self.staging_dir / f"{uuid.uuid4().hex}.part"
        return Staged(landed, copy_and_hash(landed.path, target))

    def discard(self, staged: Staged) -> None:
        staged.copy.path.unlink(missing_ok=True)

    def store(self, staged: Staged, key: str, accepted: bool, reports: tuple[str, str] | None = None) -> Path:
        """Move the staged copy to accepted/ or quarantine/ and drop the incoming original."""
        folder = self.accepted_dir if accepted else self.quarantine_dir
        target = folder / stored_name(key)
        if reports is not None:
            self._write_reports(target, reports)
        os.replace(staged.copy.path, target)  # same filesystem: atomic, never a link
        self._remove_source(staged, target)
        return target

    def store_entry(self, landed: LandedFile, key: str, reports: tuple[str, str]) -> Path:
        """Rename a link, FIFO, directory or device into quarantine/ as it is (never opened)."""
        target = self.quarantine_dir / stored_name(key)
        if landed.path.parent != self.incoming_dir:
            return landed.path  # already stored: nothing to move
        if os.path.lexists(target):
            raise FileExistsError(f"{target} already exists")
        self._write_reports(target, reports)
        os.rename(landed.path, target)  # rename moves the link itself, not what it points to
        return target

    @staticmethod
    def _write_reports(target: Path, reports: tuple[str, str]) -> None:
        for suffix, text in zip(REPORT_SUFFIXES, reports, strict=True):
            path = target.with_name(target.name + suffix)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    def _remove_source(self, staged: Staged, target: Path) -> None:
        source = staged.landed.path
        if source == target or not staged.copy.source_unchanged:
            return
        try:
            st = source.lstat()
        except FileNotFoundError:
            return
        same = (st.st_dev, st.st_ino) == staged.copy.source_id and st.st_size == staged.copy.size_bytes
        if same:  # only the very file that was copied, never a newer one landed under its name
            source.unlink()

    def accepted_files(self) -> list[Path]:
        """Every accepted data file (links and other non-regular entries included, to be refused)."""
        folder = self.accepted_dir
        return sorted(
            folder / name
            for name in os.listdir(folder)
            if not name.startswith(".") and not name.endswith(REPORT_SUFFIXES + TEMPORARY_SUFFIXES)
        )

    @staticmethod
    def read_accepted(path: Path) -> bytes:
        """An accepted file's bytes, checked against the hash in its stored name."""
        try:
            expected = stored_hash(path.name)
        except InvalidKeyError as exc:
            raise ValueError(f"{path.name} in accepted/ was not stored by the batch gate: {exc}") from exc
        try:
            return read_verified(path, expected)
        except NotRegularFileError as exc:
            raise ValueError(f"{path.name} in accepted/ is refused: {exc.strerror}") from exc

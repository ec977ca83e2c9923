"""The landing zone's folders and the moves between them (plain Python, no Dagster).

``incoming/`` is untrusted: anyone may drop anything there. Every entry is
looked at with ``lstat`` only; a regular file is opened without following
links and copied into the private ``staging/`` folder, hashed from the bytes
copied. Only that copy is validated and then moved (renamed, never linked) to
``accepted/`` or ``quarantine/`` under ``<stem>@<sha256><suffix>``. Links,
FIFOs, directories and devices are never opened: they are renamed into
``quarantine/`` as they are, with a report. An accepted batch can be
retracted: it is renamed into ``retracted/`` beside a ``.retraction.json``
record (reason, actor, time, the version that prompted it), and it is never
accepted again while it stays there. Nothing is deleted except an incoming
file whose exact content has been stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ml_platform.validation.names import (
    LEGACY_HASH_LENGTH,
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
RETRACTION_SUFFIX = ".retraction.json"
MAX_REASON_CHARS = 2000


class RetractionError(ValueError):
    """A retraction that cannot be done (the batch was never accepted, the reason is empty, ...)."""


class UnknownBatchError(RetractionError, LookupError):
    """No accepted (or retracted) batch has this partition key."""


@dataclass(frozen=True)
class RetractionRecord:
    """Why and when an accepted batch left ``accepted/`` (written beside it in ``retracted/``)."""

    key: str
    sha256: str
    reason: str
    actor: str
    retracted_at: str
    path: str  # where the batch is now
    version: str | None = None  # the model version that prompted the retraction, if any
    already_retracted: bool = False  # True when this call found the batch retracted before (nothing moved)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("already_retracted")
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def read(cls, path: Path) -> RetractionRecord:
        """A record written by :meth:`LandingFolders.retract` (``already_retracted`` set)."""
        data = json.loads(path.read_text())
        required = {k: str(data.get(k) or "") for k in ("key", "sha256", "reason", "actor", "retracted_at", "path")}
        version = data.get("version")
        return cls(**required, version=None if version is None else str(version), already_retracted=True)


def clean_reason(reason: str) -> str:
    """A retraction reason as recorded: stripped, non-empty, at most :data:`MAX_REASON_CHARS` characters."""
    text = " ".join((reason or "").split())
    if not text:
        raise RetractionError("a retraction needs a reason (e.g. --reason 'labels rotated by the export job')")
    if len(text) > MAX_REASON_CHARS:
        raise RetractionError(f"the reason is {len(text)} characters long; at most {MAX_REASON_CHARS} are allowed")
    return text


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

    @property
    def retracted_dir(self) -> Path:
        return self._folder("retracted")

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

    # -- retraction ------------------------------------------------------------------------

    def _accepted_entry(self, key: str) -> Path | None:
        """The accepted file of a (validated) key: its stored name, or the legacy 12-hex name of older homes."""
        _, digest = split_partition_key(key)
        folder = self.accepted_dir
        stored = stored_name(key)
        legacy = stored.replace(f"@{digest}", f"@{digest[:LEGACY_HASH_LENGTH]}", 1)
        for candidate in (folder / stored, folder / legacy):
            if _inside(folder, candidate) and os.path.lexists(candidate):
                return candidate
        return None

    def retraction_of(self, key: str) -> RetractionRecord | None:
        """The record of a retracted batch (None when the key was never retracted)."""
        split_partition_key(key)
        path = self.retracted_dir / (stored_name(key) + RETRACTION_SUFFIX)
        if not _inside(self.retracted_dir, path) or not path.is_file() or path.is_symlink():
            return None
        return RetractionRecord.read(path)

    def retracted_hashes(self) -> dict[str, str]:
        """``{sha256: key}`` of every retracted batch (its content may not be accepted again)."""
        found = {}
        for name in os.listdir(self.retracted_dir):
            if not name.endswith(RETRACTION_SUFFIX):
                continue
            try:
                record = RetractionRecord.read(self.retracted_dir / name)
            except (OSError, ValueError, TypeError):
                continue
            found[record.sha256] = record.key
        return found

    def retractable(self, key: str) -> None:
        """Raise unless ``key`` names a batch that is accepted or already retracted (nothing is moved).

        :class:`InvalidKeyError` for a key the landing zone never produced (checked before any path is
        built), :class:`UnknownBatchError` for a batch that is not there, with where it is instead.
        """
        split_partition_key(key)
        if self._accepted_entry(key) is not None or self.retraction_of(key) is not None:
            return
        quarantined = self.quarantine_dir / stored_name(key)
        if _inside(self.quarantine_dir, quarantined) and os.path.lexists(quarantined):
            raise UnknownBatchError(f"{key} was quarantined by the batch gate, never accepted: nothing to retract")
        raise UnknownBatchError(
            f"no accepted batch {key!r} in {self.accepted_dir} (nor a retracted one in {self.retracted_dir}); "
            "keys are `<file name>@<sha256>` as shown by the raw_batch partitions"
        )

    def retract(self, key: str, reason: str, *, actor: str, version: str | None = None) -> RetractionRecord:
        """Move ``accepted/<stored name>`` to ``retracted/`` beside a ``.retraction.json`` record.

        Idempotent: a batch retracted before is left as it is and its first record is returned
        (``already_retracted=True``). Nothing is deleted; the record is written before the move,
        so an interrupted retraction is completed by running it again.
        """
        text = clean_reason(reason)
        self.retractable(key)
        _, digest = split_partition_key(key)
        source = self._accepted_entry(key)
        if source is None:
            existing = self.retraction_of(key)
            assert existing is not None  # retractable() said so
            return existing
        target = self.retracted_dir / source.name
        record_path = self.retracted_dir / (stored_name(key) + RETRACTION_SUFFIX)
        if os.path.lexists(target):
            raise RetractionError(f"{target} already exists: a retracted copy of {key} is in the way; move it aside")
        record = RetractionRecord(
            key=key,
            sha256=digest,
            reason=text,
            actor=actor or "unknown",
            retracted_at=datetime.now(UTC).isoformat(timespec="seconds"),
            path=str(target),
            version=version,
        )
        tmp = record_path.with_name(record_path.name + ".tmp")
        tmp.write_text(record.to_json())
        os.replace(tmp, record_path)
        os.rename(source, target)  # same folder tree: atomic; a link is moved as it is, never followed
        return record

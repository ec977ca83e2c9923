"""Open, copy and hash landed files without following links or blocking on FIFOs.

Every read of a landed file goes through :func:`open_regular`: ``O_NOFOLLOW``
refuses a symbolic link in the last path component (the link is never read
through), ``O_NONBLOCK`` keeps a FIFO from hanging the open, and ``fstat`` on
the open descriptor refuses anything that is not a regular file. What is
validated and stored is a private copy, hashed from the very bytes written,
so a file changed after it was checked can never slip in unvalidated.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class NotRegularFileError(OSError):
    """The path is a symbolic link, FIFO, directory, device or socket, not a regular file."""


def entry_kind(mode: int) -> str:
    """What an ``lstat`` mode describes, in words."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


KIND_SENTENCES = {
    "symlink": "it is a symbolic link; links are never followed, land the file itself",
    "fifo": "it is a named pipe (FIFO), not a regular file",
    "directory": "it is a directory, not a regular file; land its files one by one",
    "socket": "it is a socket, not a regular file",
    "device": "it is a device node, not a regular file",
    "other": "it is not a regular file",
    "unreadable": "it cannot be read by the platform (permission denied)",
}


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path`` if it is a regular file reached without a link."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFileError(errno.ELOOP, KIND_SENTENCES["symlink"], str(path)) from exc
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = entry_kind(mode)
        raise NotRegularFileError(errno.EINVAL, KIND_SENTENCES.get(kind, KIND_SENTENCES["other"]), str(path))
    return fd


def hash_file(path: Path) -> str:
    """SHA-256 of a regular file's content (never through a link)."""
    digest = hashlib.sha256()
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Copied:
    """A private copy of a landed file and the hash of exactly the bytes written to it."""

    path: Path
    sha256: str
    size_bytes: int
    source_unchanged: bool  # the source's inode, size and mtime did not change while it was copied
    source_id: tuple[int, int]


def copy_and_hash(source: Path, target: Path) -> Copied:
    """Copy a regular file to a new ``target`` (never overwritten), hashing the copied bytes."""
    fd = open_regular(source)
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb") as handle:
        before = os.fstat(handle.fileno())
        out_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(out_fd, "wb") as out:
                for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        after = os.fstat(handle.fileno())
    unchanged = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns) == (size, after.st_mtime_ns)
    return Copied(target, digest.hexdigest(), size, unchanged, (before.st_dev, before.st_ino))


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """The content of a stored file, read once and checked against the hash it was stored under.

    ``expected_sha256`` may be a full hash or a legacy 12-hex prefix (which must match exactly).
    Raises :class:`ValueError` with a plain sentence when the content changed.
    """
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    actual = hashlib.sha256(data).hexdigest()
    matches = (
        actual == expected_sha256 if len(expected_sha256) == 64 else actual[: len(expected_sha256)] == expected_sha256
    )
    if not matches:
        raise ValueError(
            f"{path.name} changed after it was accepted: its sha256 is now {actual}, "
            f"but it was accepted as {expected_sha256}"
        )
    return data

"""Names in the landing zone: landed file names, partition keys and stored names.

A partition key is ``<landed name>@<sha256>``: the file's name and the full
64-hex SHA-256 of its content. Both parts are validated before a key is used
to build any path, so a key can never point outside ``incoming/``,
``accepted/`` or ``quarantine/``:

- a landed name is a single path component: no ``/`` or ``\\``, no NUL or
  other control character, valid UTF-8, not hidden (no leading ``.``), and at
  most :data:`MAX_NAME_BYTES` bytes;
- the hash part is exactly 64 lowercase hex digits (no prefix matching).

A file that lands under a name breaking these rules is still processed (and
quarantined with a report): it is keyed and stored under :func:`safe_name`, a
shortened, cleaned form that always passes.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

PARTITION_SEPARATOR = "@"
SHA256_HEX_LENGTH = 64
LEGACY_HASH_LENGTH = 12  # stored names written before full hashes (accepted/ of older homes)
MAX_NAME_BYTES = 128
SHORTENED_MARKER = "~"
_MAX_SUFFIX_BYTES = 16
_HASH = re.compile(r"[0-9a-f]{64}")
_STORED = re.compile(r"^(?P<stem>.+)@(?P<hash>[0-9a-f]{64}|[0-9a-f]{12})(?P<suffix>\.[^@/]*)?$", re.DOTALL)


class InvalidKeyError(ValueError):
    """A partition key or stored name that is not one the landing zone produced."""


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _is_bad_char(char: str) -> bool:
    return char in "/\\" or unicodedata.category(char) in ("Cc", "Cs")


def name_problems(name: str) -> list[str]:
    """Plain sentences saying why ``name`` may not be used as a landed name (empty when fine)."""
    problems = []
    if not name:
        return ["the file name is empty"]
    size = len(_name_bytes(name))
    if size > MAX_NAME_BYTES:
        problems.append(f"the file name is {size} bytes long; at most {MAX_NAME_BYTES} bytes are allowed")
    if any(unicodedata.category(c) == "Cs" for c in name):
        problems.append("the file name is not valid UTF-8")
    if any(c in "/\\" for c in name):
        problems.append("the file name contains a path separator")
    if any(unicodedata.category(c) == "Cc" for c in name):
        problems.append("the file name contains a control character")
    if name.startswith("."):
        problems.append("the file name starts with '.' (hidden files and '..' are not landed files)")
    return problems


def safe_name(name: str) -> str:
    """``name`` itself when valid, else a cleaned, shortened name that always is."""
    if not name_problems(name):
        return name
    cleaned = "".join("_" if _is_bad_char(c) else c for c in name).lstrip(".") or "unnamed"
    path = PurePosixPath(cleaned)
    suffix = path.suffix if len(_name_bytes(path.suffix)) <= _MAX_SUFFIX_BYTES else ""
    stem = cleaned[: len(cleaned) - len(suffix)] if suffix else cleaned
    budget = MAX_NAME_BYTES - len(_name_bytes(suffix)) - len(SHORTENED_MARKER)
    if len(_name_bytes(stem + suffix)) > MAX_NAME_BYTES:
        encoded = _name_bytes(stem)[:budget]
        stem = encoded.decode("utf-8", "ignore") + SHORTENED_MARKER
    result = (stem or "unnamed") + suffix
    assert not name_problems(result), result
    return result


def partition_key_for(file_name: str, sha256: str) -> str:
    """Partition key of a landed file: its (safe) name and the full content hash."""
    if not _HASH.fullmatch(sha256):
        raise InvalidKeyError(f"a landed file's hash must be 64 lowercase hex digits, got {sha256!r}")
    return f"{safe_name(file_name)}{PARTITION_SEPARATOR}{sha256}"


def split_partition_key(key: str) -> tuple[str, str]:
    """``(file_name, sha256)`` of a valid partition key; :class:`InvalidKeyError` otherwise."""
    name, sep, digest = key.rpartition(PARTITION_SEPARATOR)
    if not sep:
        raise InvalidKeyError(f"not a landed-file partition key (no '@<sha256>' part): {key!r}")
    if not _HASH.fullmatch(digest):
        raise InvalidKeyError(
            f"not a landed-file partition key: the part after '@' must be the file's full sha256 "
            f"(64 lowercase hex digits), got {digest!r} in {key!r}"
        )
    problems = name_problems(name)
    if problems:
        raise InvalidKeyError(f"not a landed-file partition key {key!r}: {'; '.join(problems)}")
    return name, digest


def stored_name(key: str) -> str:
    """File name of a processed file in accepted/ or quarantine/: ``<stem>@<sha256><suffix>``."""
    name, digest = split_partition_key(key)
    path = PurePosixPath(name)
    suffix = path.suffix
    stem = name[: len(name) - len(suffix)] if suffix else name
    return f"{stem}{PARTITION_SEPARATOR}{digest}{suffix}"


def stored_hash(stored: str) -> str:
    """The content hash (64 hex, or a 12-hex legacy prefix) a stored name records."""
    match = _STORED.match(stored)
    if not match:
        raise InvalidKeyError(f"{stored!r} is not a stored landing-zone name (<stem>@<sha256><suffix>)")
    return match.group("hash")

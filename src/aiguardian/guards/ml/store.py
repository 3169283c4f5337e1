"""A small file format for model weights: JSON metadata and numpy arrays, zlib-compressed, byte-for-byte
reproducible (no time stamps, keys sorted), readable with the standard library and numpy alone."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

MAGIC = b"AIGML1\n"


class ModelFileError(Exception):
    """The file is not a model file of this format, or it is damaged."""


def save(path: Path, meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> None:
    """Write ``meta`` (plain JSON values) and ``arrays`` into ``path``; the same input gives the same bytes."""
    index: dict[str, dict[str, Any]] = {}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        if array.dtype.kind not in "biuf":
            raise TypeError(f"array {name!r}: only numbers can be stored, not {array.dtype}")
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        index[name] = {
            "dtype": array.dtype.newbyteorder("<").str,
            "shape": list(array.shape),
            "offset": offset,
        }
        blobs.append(data)
        offset += len(data)
    header = json.dumps({"meta": meta, "arrays": index}, sort_keys=True, separators=(",", ":")).encode()
    body = struct.pack("<I", len(header)) + header + b"".join(blobs)
    path.write_bytes(MAGIC + zlib.compress(body, 9))


def load(path: Path) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Read a file written by :func:`save`: ``(meta, arrays)``. The arrays are read-only."""
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise ModelFileError(f"{path} is not a model file")
    try:
        body = zlib.decompress(raw[len(MAGIC) :])
        (size,) = struct.unpack_from("<I", body)
        header = json.loads(body[4 : 4 + size])
        start = 4 + size
        arrays: dict[str, npt.NDArray[Any]] = {}
        for name, spec in header["arrays"].items():
            dtype = np.dtype(spec["dtype"])
            count = int(np.prod(spec["shape"], dtype=np.int64))
            arrays[name] = np.frombuffer(
                body, dtype=dtype, count=count, offset=start + spec["offset"]
            ).reshape(spec["shape"])
    except (zlib.error, struct.error, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path} is damaged: {exc}") from None
    return header["meta"], arrays

"""IDX files, MNIST's format: read (plain or gzipped), encode and write uint8 arrays."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Protocol

import numpy as np

class _Readable(Protocol):
    """A pathlib.Path or an importlib.resources Traversable: the bundled files may sit in a zip."""

    name: str

    def read_bytes(self) -> bytes: ...


def read_idx(file: _Readable) -> np.ndarray:
    """Decode an unsigned-byte IDX file (gzipped if its name ends in .gz) into a uint8 array.

    Raises ValueError when the content is not a valid ubyte IDX file.
    """
    data = file.read_bytes()
    if file.name.endswith(".gz"):
        data = gzip.decompress(data)
    # Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then
    # one big-endian uint32 per dimension.
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(f"size does not match its header shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """The (uncompressed) IDX encoding of a uint8 array: the inverse of read_idx."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, gzip -9 compressed when the name ends in .gz.

    The gzip header carries no timestamp, so the same array always gives the same bytes.
    """
    data = encode_idx(array)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    path.write_bytes(data)

"""The IDX format of MNIST (LeCun et al.), raw or gzipped, read in one pass.

A file is a 4-byte magic number ``0x00 0x00 TYPE NDIM``, NDIM big-endian uint32 sizes, then the
data in C order. The whole file is decompressed at once and viewed with ``np.frombuffer``, which
is what makes the 60000-image training set load in well under a second.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from math import prod
from pathlib import Path

import numpy as np

from pacbound.errors import InvalidInputError

#: IDX type byte → NumPy dtype (big-endian where it matters).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def read_idx(path: Path, *, ndim: int, option: str = "--data") -> np.ndarray:
    """The array in an IDX file, which must have ``ndim`` dimensions (3 images, 1 labels)."""
    data = _read_bytes(path, option)
    expected = 0x00000800 | ndim
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic is None or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        shown = "none (file too short)" if magic is None else f"0x{magic:08x}"
        raise InvalidInputError(
            f"{option}: {path} has IDX magic number {shown}, expected 0x{expected:08x}; it is "
            "not an IDX file (or is still compressed without a .gz suffix): replace it with "
            "the original MNIST file",
            param=option,
        )
    if data[3] != ndim:
        raise InvalidInputError(
            f"{option}: {path} has IDX magic number 0x{magic:08x} ({data[3]} dimensions), "
            f"expected 0x{expected:08x} ({ndim}); images and labels files may be swapped",
            param=option,
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _truncated(path, option, "the header is incomplete")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[data[2]]
    size = prod(dims) * dtype.itemsize
    if len(data) - header != size:
        raise _truncated(
            path,
            option,
            f"header says {size} data bytes for shape {dims}, found {len(data) - header}",
        )
    return np.frombuffer(data, dtype=dtype, count=prod(dims), offset=header).reshape(dims)


def _read_bytes(path: Path, option: str) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        # wbits=31: a gzip stream; one call decompresses the whole file.
        return zlib.decompress(raw, wbits=31)
    except zlib.error:
        try:
            return gzip.decompress(raw)  # multi-member gzip files
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidInputError(
                f"{option}: {path} is not a valid gzip file ({exc}); it is truncated or "
                "corrupt: copy it again",
                param=option,
            ) from None


def _truncated(path: Path, option: str, detail: str) -> InvalidInputError:
    return InvalidInputError(
        f"{option}: {path} is truncated or corrupt ({detail}); copy it again", param=option
    )

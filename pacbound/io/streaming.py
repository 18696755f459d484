"""Features that stay on disk: a memory-mapped ``x.npy`` read a batch at a time.

A folder holding ``x.npy`` (``uint8`` or floating point, one row per example) and ``y.npy``
(integer labels) is opened with ``np.load(mmap_mode="r")``. The features are exposed as a
:class:`LazyFeatures`: read-only, tensor-like enough for the certification pipelines (``len``,
``.shape``, ``x[a:b]``, ``x[index_tensor]``), and every read returns a real float32 tensor of
just the requested rows, scaled and normalized exactly as :func:`load_dataset` does for
in-memory formats (so both give bit-identical batches). After each read the mapped file pages
are handed back (``madvise(MADV_DONTNEED)``): they stay in the operating system's page cache,
which it may drop, but not in this process's resident set, so peak memory is about one batch,
not the whole data set.

What is read at once: a batch (``--batch-size``), the first 256 rows (the determinism check),
and two bounded subsets: the isotropic σ search (``search_examples``, 10000 by default) and the
quantization-aware fine-tuning subset (``qat_examples``, 10000). A data-dependent prior's split
into S_prior and S_bound stays lazy (:func:`pacbound.certify.common.take_rows`).
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pacbound.errors import InvalidInputError
from pacbound.io.transforms import Normalization

#: Rows scanned at a time when checking that floating-point features are finite.
CHECK_ROWS = 8192
#: Rows per chunk of a scattered read (``x[indices]``), after which mapped pages are released.
SCATTER_ROWS = 128
FEATURES_FILE, LABELS_FILE = "x.npy", "y.npy"

Index = int | slice | Tensor | np.ndarray | Sequence[int]


def is_npy_folder(path: Path) -> bool:
    return path.is_dir() and (path / FEATURES_FILE).is_file()


def open_npy(path: Path, name: str, *, mmap: bool, option: str = "--data") -> np.ndarray:
    """``path/name`` as an array (memory-mapped when ``mmap``), refusing pickled objects."""
    file = path / name
    if not file.is_file():
        raise InvalidInputError(
            f"{option} {path}: no {name} in this folder; a streamed data set is a folder with "
            f"{FEATURES_FILE} (features) and {LABELS_FILE} (labels), saved with np.save",
            param=option,
        )
    try:
        array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(
            f"{option}: {file} is not a readable .npy file of numbers ({exc}); save it with "
            "np.save(path, array)",
            param=option,
        ) from None
    if not isinstance(array, np.ndarray):
        raise InvalidInputError(f"{option}: {file} holds no array", param=option)
    return array


class LazyFeatures:
    """Rows of a (memory-mapped) array, converted to float32 tensors only when indexed.

    ``rows`` selects and orders the examples (a subset or a split) without reading them.
    With ``scale`` (default: the array is ``uint8``) values are scaled to [0, 1] by
    ``x / 255`` in float32; each example is viewed as ``example_shape`` (default: as stored);
    ``normalization`` is applied per batch. Indexing returns a fresh tensor;
    nothing can be written back.

    >>> lazy = LazyFeatures(np.arange(12, dtype=np.uint8).reshape(4, 3))
    >>> lazy.shape, len(lazy)
    (torch.Size([4, 3]), 4)
    >>> lazy[1:3].mul(255).round().tolist()
    [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    >>> lazy.view_rows(torch.tensor([3, 0]))[torch.tensor([1])].mul(255).round().tolist()
    [[0.0, 1.0, 2.0]]
    """

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(
        self,
        array: np.ndarray,
        *,
        normalization: Normalization | None = None,
        rows: Tensor | None = None,
        scale: bool | None = None,
        example_shape: tuple[int, ...] | None = None,
    ) -> None:
        self._array = array
        self._normalization = normalization
        self._rows = None if rows is None else rows.to(torch.int64).cpu()
        self._scale = bool(array.dtype == np.uint8) if scale is None else scale
        stored = tuple(array.shape[1:])
        self._example = stored if example_shape is None else tuple(example_shape)
        if int(np.prod(self._example)) != int(np.prod(stored)):
            raise ValueError(f"cannot view examples of shape {stored} as {self._example}")
        n = array.shape[0] if self._rows is None else int(self._rows.numel())
        self._shape = torch.Size((n, *self._example))

    @property
    def scaled(self) -> bool:
        """Whether the stored values are divided by 255 on reading (``uint8`` images)."""
        return self._scale

    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    def __len__(self) -> int:
        return self._shape[0]

    def size(self, dim: int | None = None) -> Any:
        return self._shape if dim is None else self._shape[dim]

    def __repr__(self) -> str:
        return (
            f"LazyFeatures(shape={list(self._shape)}, stored={self._array.dtype}, "
            f"normalization={self._normalization})"
        )

    def view_rows(self, indices: Tensor) -> LazyFeatures:
        """A lazy view of the given rows (a subset or split), nothing read yet."""
        idx = self._positions(torch.as_tensor(indices, dtype=torch.int64))
        return self._copy(rows=idx)

    def with_normalization(self, normalization: Normalization | None) -> LazyFeatures:
        return self._copy(normalization=normalization)

    def _copy(self, **changes: Any) -> LazyFeatures:
        kwargs: dict[str, Any] = {
            "normalization": self._normalization,
            "rows": self._rows,
            "scale": self._scale,
            "example_shape": self._example,
        }
        kwargs.update(changes)
        return type(self)(self._array, **kwargs)

    def __getitem__(self, key: Index) -> Tensor:
        if isinstance(key, int):
            return self[key : key + 1][0] if key != -1 else self[key:][0]
        if isinstance(key, slice):
            if self._rows is None and key.step in (None, 1):
                start, stop, _ = key.indices(len(self))
                batch = self._convert(self._array[start:stop])
                self._unmap()
                return batch
            key = torch.arange(len(self))[key]
        positions = self._positions(torch.as_tensor(key, dtype=torch.int64).reshape(-1))
        return self._convert(self._read(positions.numpy()))

    def _positions(self, idx: Tensor) -> Tensor:
        """Indices into the stored array of this view's rows ``idx`` (bounds-checked)."""
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"row index out of range for {n} examples")
        idx = torch.where(idx < 0, idx + n, idx)
        return idx if self._rows is None else self._rows[idx]

    def _read(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions``, read in sorted chunks of :data:`SCATTER_ROWS`.

        Each page fault on a mapped file also maps up to 64 KiB of neighbouring cached pages
        ("fault-around"), so scattered reads would map far more than they copy: the mapped
        pages are released after every chunk.
        """
        order = np.argsort(positions, kind="stable")
        out = np.empty((positions.size, *self._array.shape[1:]), dtype=self._array.dtype)
        for start in range(0, positions.size, SCATTER_ROWS):
            chunk = order[start : start + SCATTER_ROWS]
            out[chunk] = self._array[positions[chunk]]
            self._unmap()
        return out

    def _unmap(self) -> None:
        """Drop the file pages mapped by the last read from this process (they were copied);
        they stay in the page cache."""
        mapped = getattr(self._array, "_mmap", None)
        if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED)

    def _convert(self, block: np.ndarray) -> Tensor:
        if self.scaled:
            values = np.divide(block, np.float32(255.0), dtype=np.float32)
        else:
            values = np.array(block, dtype=np.float32)  # a writable copy, never the map
        tensor = torch.from_numpy(values).reshape(values.shape[0], *self._example)
        if self._normalization is not None:
            tensor = self._normalization.apply(tensor, source="--data")
        return tensor

    def check_finite(self, source: str) -> None:
        """Refuse NaN/Inf features (floating-point files only), scanning in chunks."""
        if self._array.dtype.kind != "f":
            return
        for start in range(0, self._array.shape[0], CHECK_ROWS):
            chunk = np.asarray(self._array[start : start + CHECK_ROWS])
            finite = np.isfinite(chunk.reshape(chunk.shape[0], -1)).all(axis=1)
            self._unmap()
            if not finite.all():
                first = start + int(np.argmin(finite))
                raise InvalidInputError(
                    f"{source}: example {first} has NaN/Inf features; clean or drop those rows",
                    param=source.split(" ", 1)[0],
                )

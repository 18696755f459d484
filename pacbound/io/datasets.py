"""Loading a data set offline: MNIST IDX folders, ``.npz``, ``.safetensors``, ``.csv``, and
folders of ``x.npy``/``y.npy`` that are streamed from disk.

Every reader yields features and integer labels; one pipeline then checks them, scales
``uint8`` images to [0, 1] float32, maps labels, normalizes, takes a subset, and records all of
it in the provenance. A ``.npy`` folder goes through the same steps, but its features stay
memory-mapped (:class:`~pacbound.io.streaming.LazyFeatures`): scaling and normalization happen
per batch as rows are read. Nothing is ever downloaded.
"""

from __future__ import annotations

import csv
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from pacbound.errors import InvalidInputError
from pacbound.io.idx import read_idx
from pacbound.io.provenance import DatasetProvenance, FileRecord, check_file
from pacbound.io.streaming import (
    FEATURES_FILE,
    LABELS_FILE,
    LazyFeatures,
    is_npy_folder,
    open_npy,
)
from pacbound.io.transforms import LabelMap, Normalization, parse_label_map, parse_normalization
from pacbound.io.validation import check_features_finite

#: Column names taken as the label in a CSV file with a header, when none is given.
LABEL_COLUMN_NAMES = ("label", "labels", "y", "target", "class")
_IDX_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


class DataFormat(str, Enum):
    IDX = "idx"
    NPZ = "npz"
    SAFETENSORS = "safetensors"
    CSV = "csv"
    NPY = "npy"  # a folder with x.npy and y.npy, streamed


class Split(str, Enum):
    TRAIN = "train"
    TEST = "test"


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``x`` (float32, images as N×C×H×W), labels ``y`` (int64) and provenance.

    ``x`` is a tensor in memory, or for a ``.npy`` folder a read-only :class:`LazyFeatures`
    whose ``x[a:b]`` and ``x[indices]`` return float32 tensors of those rows only. It is typed
    ``Tensor`` because the pipelines use only that tensor-like part (``len``, ``.shape``,
    ``x[a:b]``, ``x[indices]``, ``.device``); whole-array operations (``x.sum()``,
    ``torch.cat``) work only on an in-memory data set.
    """

    x: Tensor
    y: Tensor
    num_classes: int
    provenance: DatasetProvenance

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True, eq=False)
class _Raw:
    x: np.ndarray
    y: np.ndarray
    files: tuple[Path, ...]
    label_column: str | None = None


def load_dataset(
    path: str | os.PathLike[str],
    *,
    split: str | Split = Split.TRAIN,
    label_column: str | int | None = None,
    label_map: LabelMap | str | None = None,
    normalize: Normalization | str | None = None,
    subset: int | Sequence[int] | None = None,
) -> Dataset:
    """Read a data set and check it (non-empty, matching counts, integer labels, finite).

    ``split`` picks the IDX files (``train`` or ``t10k``/``test``); ``label_column`` names or
    indexes the CSV label column; ``subset`` is a count (the first k examples) or explicit
    indices, applied last and recorded.
    """
    source = Path(path)
    chosen = _split(split)
    fmt = _format(source)
    if fmt is DataFormat.NPY:
        return _load_npy_folder(source, label_map=label_map, normalize=normalize, subset=subset)
    if fmt is DataFormat.IDX:
        raw = _read_idx_folder(source, chosen)
    elif fmt is DataFormat.NPZ:
        raw = _read_npz(check_file(source, "--data"))
    elif fmt is DataFormat.SAFETENSORS:
        raw = _read_safetensors(check_file(source, "--data"))
    else:
        raw = _read_csv(check_file(source, "--data"), label_column)
    where = f"--data {source}"
    x, scaled = _features(raw.x, where)
    y = _labels(raw.y, n=x.shape[0], source=where)
    check_features_finite(x, where)
    lmap = parse_label_map(label_map) if isinstance(label_map, str) else label_map
    if lmap is not None:
        y = lmap.apply(y, source=where)
    num_classes = lmap.num_classes if lmap is not None else int(y.max()) + 1
    norm = parse_normalization(normalize) if isinstance(normalize, str) else normalize
    if norm is not None:
        x = norm.apply(x, source=where)
    indices = _subset_indices(subset, x.shape[0])
    if indices is not None:
        x, y = x[indices], y[indices]
    provenance = DatasetProvenance(
        path=str(source),
        format=fmt.value,
        files=tuple(FileRecord.of(f) for f in raw.files),
        n=int(y.shape[0]),
        num_classes=num_classes,
        split=chosen.value if fmt is DataFormat.IDX else None,
        label_column=raw.label_column,
        label_map=lmap.text if lmap is not None else None,
        normalization=norm.describe() if norm is not None else None,
        scaled_to_unit=scaled,
        subset_indices=None if indices is None else tuple(indices.tolist()),
    )
    return Dataset(x.contiguous(), y, num_classes, provenance)


def _split(split: str | Split) -> Split:
    try:
        return Split(split)
    except ValueError:
        raise InvalidInputError(
            f"--split {split!r}: choose one of {', '.join(s.value for s in Split)}",
            param="--split",
        ) from None


def _load_npy_folder(
    source: Path,
    *,
    label_map: LabelMap | str | None,
    normalize: Normalization | str | None,
    subset: int | Sequence[int] | None,
) -> Dataset:
    """The ``.npy`` folder path of :func:`load_dataset`: labels in memory, features mapped."""
    where = f"--data {source}"
    files = (
        check_file(source / FEATURES_FILE, "--data"),
        check_file(source / LABELS_FILE, "--data"),
    )
    array = open_npy(source, FEATURES_FILE, mmap=True)
    _check_feature_array(array, where)
    y = _labels(open_npy(source, LABELS_FILE, mmap=False), n=array.shape[0], source=where)
    lmap = parse_label_map(label_map) if isinstance(label_map, str) else label_map
    if lmap is not None:
        y = lmap.apply(y, source=where)
    num_classes = lmap.num_classes if lmap is not None else int(y.max()) + 1
    norm = parse_normalization(normalize) if isinstance(normalize, str) else normalize
    x = LazyFeatures(array, normalization=norm)
    x.check_finite(where)
    x[:1]  # validates the normalization against the channel axis
    indices = _subset_indices(subset, len(x))
    if indices is not None:
        x, y = x.view_rows(indices), y[indices]
    provenance = DatasetProvenance(
        path=str(source),
        format=DataFormat.NPY.value,
        files=tuple(FileRecord.of(f) for f in files),
        n=int(y.shape[0]),
        num_classes=num_classes,
        label_map=lmap.text if lmap is not None else None,
        normalization=norm.describe() if norm is not None else None,
        scaled_to_unit=x.scaled,
        subset_indices=None if indices is None else tuple(indices.tolist()),
    )
    return Dataset(cast(Tensor, x), y, num_classes, provenance)


def _format(path: Path) -> DataFormat:
    if is_npy_folder(path):
        return DataFormat.NPY
    if path.is_dir():
        return DataFormat.IDX
    suffix = path.suffix.lower().lstrip(".")
    if suffix in {f.value for f in DataFormat if f not in (DataFormat.IDX, DataFormat.NPY)}:
        return DataFormat(suffix)
    if not path.exists():
        raise InvalidInputError(f"--data: {path} does not exist; check the path", param="--data")
    raise InvalidInputError(
        f"--data: cannot tell the format of {path}; give an MNIST IDX folder, a folder with "
        "x.npy and y.npy (streamed), or a .npz, .safetensors or .csv file",
        param="--data",
    )


def _read_idx_folder(folder: Path, split: Split) -> _Raw:
    images = _find_idx(folder, split, "images")
    labels = _find_idx(folder, split, "labels")
    x = read_idx(check_file(images, "--data"), ndim=3)
    y = read_idx(check_file(labels, "--data"), ndim=1)
    if x.shape[0] != y.shape[0]:
        raise InvalidInputError(
            f"--data {folder}: {images.name} has {x.shape[0]} images but {labels.name} has "
            f"{y.shape[0]} labels; use files from the same split and release",
            param="--data",
        )
    return _Raw(x, y, (images, labels))


def _find_idx(folder: Path, split: Split, kind: str) -> Path:
    candidates = sorted(
        p
        for p in folder.iterdir()
        if p.name.startswith(tuple(f"{prefix}-{kind}" for prefix in _IDX_PREFIXES[split.value]))
        and "idx" in p.name
    )
    if not candidates:
        expected = f"{_IDX_PREFIXES[split.value][0]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        raise InvalidInputError(
            f"--data {folder}: no {split.value} {kind} file ({expected}[.gz]) in this folder; "
            "point --data to a folder with the MNIST IDX files, or change --split",
            param="--data",
        )
    raw = [p for p in candidates if p.suffix != ".gz"]
    return (raw or candidates)[0]


def _read_npz(file: Path) -> _Raw:
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ("x", "y") if key in archive.files}
            keys = list(archive.files)
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise InvalidInputError(
            f"--data: {file} holds object arrays, which would need pickle ({exc}); save "
            "numeric arrays with np.savez(path, x=..., y=...)",
            param="--data",
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidInputError(
            f"--data: {file} is not a readable .npz file ({exc}); save it with "
            "np.savez(path, x=..., y=...)",
            param="--data",
        ) from None
    return _Raw(*_xy(arrays, keys, file), (file,))


def _read_safetensors(file: Path) -> _Raw:
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            arrays = {k: handle.get_tensor(k).numpy() for k in ("x", "y") if k in keys}
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise InvalidInputError(
            f"--data: {file} is not a valid safetensors file ({exc}); save it with "
            "safetensors.torch.save_file({'x': x, 'y': y}, path)",
            param="--data",
        ) from None
    return _Raw(*_xy(arrays, keys, file), (file,))


def _xy(arrays: dict[str, Any], keys: list[str], file: Path) -> tuple[np.ndarray, np.ndarray]:
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise InvalidInputError(
            f"--data: {file} has no array {' or '.join(map(repr, missing))} (it has "
            f"{', '.join(map(repr, keys)) or 'none'}); store features as 'x' and labels as 'y'",
            param="--data",
        )
    return np.asarray(arrays["x"]), np.asarray(arrays["y"])


def _read_csv(file: Path, label_column: str | int | None) -> _Raw:
    with open(file, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise InvalidInputError(f"--data: {file} is empty; it has no rows", param="--data")
    header = rows[0] if not all(_is_number(c) for c in rows[0]) else None
    body = rows[1:] if header is not None else rows
    width = len(rows[0])
    column = _label_index(label_column, header, width, file)
    values = np.empty((len(body), width), dtype=np.float64)
    for r, row in enumerate(body):
        line = r + (2 if header is not None else 1)
        if len(row) != width:
            raise InvalidInputError(
                f"--data: {file} line {line} has {len(row)} fields, expected {width}; "
                "every row needs the same columns",
                param="--data",
            )
        for c, cell in enumerate(row):
            try:
                values[r, c] = float(cell)
            except ValueError:
                name = header[c] if header is not None else str(c)
                raise InvalidInputError(
                    f"--data: {file} line {line}, column {name!r} holds {cell!r}, not a "
                    "number; features must be numeric (encode categories as numbers first)",
                    param="--data",
                ) from None
    name = header[column] if header is not None else str(column)
    x = np.delete(values, column, axis=1)
    return _Raw(x, values[:, column], (file,), label_column=name)


def _label_index(given: str | int | None, header: list[str] | None, width: int, file: Path) -> int:
    if given is None:
        if header is not None:
            lowered = [h.strip().lower() for h in header]
            for name in LABEL_COLUMN_NAMES:
                if name in lowered:
                    return lowered.index(name)
        return width - 1
    if isinstance(given, str) and not given.lstrip("-").isdigit():
        names = [h.strip() for h in header] if header is not None else []
        if given in names:
            return names.index(given)
        raise InvalidInputError(
            f"--label-column {given!r} is not a column of {file} (columns: "
            f"{', '.join(names) if names else 'none named: the file has no header'}); give a "
            "column name or a 0-based index",
            param="--label-column",
        )
    index = int(given)
    if not -width <= index < width:
        raise InvalidInputError(
            f"--label-column {index} is out of range for {file}, which has {width} columns",
            param="--label-column",
        )
    return index % width


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _check_feature_array(x: np.ndarray, source: str) -> None:
    if x.ndim < 2 or x.shape[0] == 0:
        raise InvalidInputError(
            f"{source} has no examples (features of shape {list(x.shape)}); it must hold at "
            "least one example, one row per example",
            param="--data",
        )
    if x.dtype.kind not in "uifb":
        raise InvalidInputError(
            f"{source}: features have dtype {x.dtype}, not numbers; store numeric arrays",
            param="--data",
        )


def _features(x: np.ndarray, source: str) -> tuple[Tensor, bool]:
    _check_feature_array(x, source)
    scaled = x.dtype == np.uint8
    # A fresh, writable float32 array in one pass (np.frombuffer views are read-only).
    if scaled:
        features = np.divide(x, np.float32(255.0), dtype=np.float32)
    else:
        features = x.astype(np.float32)
    tensor = torch.from_numpy(features)
    if tensor.ndim == 3:  # N×H×W images get their channel axis
        tensor = tensor.unsqueeze(1)
    return tensor, scaled


def _labels(y: np.ndarray, *, n: int, source: str) -> Tensor:
    if y.ndim != 1 or y.shape[0] != n:
        raise InvalidInputError(
            f"{source}: {n} examples but labels of shape {list(y.shape)}; give one integer "
            "label per example",
            param="--data",
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InvalidInputError(
                f"{source}: labels must be whole numbers (class indices), found non-integer values",
                param="--data",
            )
    elif y.dtype.kind not in "uib":
        raise InvalidInputError(
            f"{source}: labels have dtype {y.dtype}; store integer class indices",
            param="--data",
        )
    labels = torch.from_numpy(y.astype(np.int64))
    if bool((labels < 0).any()):
        raise InvalidInputError(
            f"{source}: label {int(labels.min())} is negative; labels are class indices "
            "0, 1, …, K−1 (use --label-map to renumber)",
            param="--data",
        )
    return labels


def _subset_indices(subset: int | Sequence[int] | None, n: int) -> Tensor | None:
    if subset is None:
        return None
    if isinstance(subset, int):
        if not 1 <= subset <= n:
            raise InvalidInputError(
                f"subset of {subset} examples requested from a data set of {n}; ask for 1 to {n}"
            )
        return torch.arange(subset)
    indices = torch.as_tensor(list(subset), dtype=torch.int64)
    if indices.numel() == 0:
        raise InvalidInputError("the subset is empty; give at least one index")
    if bool((indices < 0).any() | (indices >= n).any()):
        raise InvalidInputError(f"subset indices must lie in [0, {n}); some are outside")
    if torch.unique(indices).numel() != indices.numel():
        raise InvalidInputError("subset indices repeat; each example may be used once")
    return indices

"""Loading a data set offline: MNIST IDX folders, ``.npz``, ``.safetensors``, ``.csv``, and
folders of ``x.npy``/``y.npy`` that are streamed from disk.

Every reader returns the stored arrays (:mod:`pacbound.io.readers`,
:mod:`pacbound.io.tabular`); one pipeline then checks them and applies the documented rules,
each recorded in the provenance so that ``verify`` repeats exactly the same load:

* scaling (``scale="auto"``): ``uint8`` features are images, divided by 255 in float32
  (``scaling: "uint8/255"``); every other dtype is used as stored, as float32
  (``scaling: "none"``); ``scale="none"`` keeps ``uint8`` values as they are;
* shape: each example keeps its stored shape, except that N×H×W images (an IDX folder, or a
  ``uint8`` array) get a channel axis, N×1×H×W; ``input_shape`` (``--input-shape C,H,W``)
  reshapes every example instead, and must hold the same number of values;
* then labels are mapped, features normalized, and a subset taken.

A ``.npy`` folder goes through the same steps, but its features stay memory-mapped
(:class:`~pacbound.io.streaming.LazyFeatures`): scaling, reshaping and normalization happen
per batch as rows are read. Nothing is ever downloaded. :func:`load_features` reads inputs
without labels (``--unlabeled``) with the same rules and provenance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from pacbound.errors import InvalidInputError
from pacbound.io.provenance import DatasetProvenance, FileRecord, check_file
from pacbound.io.readers import (
    DataFormat,
    RawData,
    Split,
    detect_format,
    read_idx_folder,
    read_npz,
    read_safetensors,
    split_of,
)
from pacbound.io.streaming import (
    FEATURES_FILE,
    LABELS_FILE,
    LazyFeatures,
    open_npy,
)
from pacbound.io.tabular import parse_delimiter, read_csv
from pacbound.io.transforms import (
    LEGACY_CHANNEL_AXIS,
    LabelMap,
    Normalization,
    example_shape,
    parse_input_shape,
    parse_label_map,
    parse_normalization,
)
from pacbound.io.validation import check_feature_array as _check_feature_array
from pacbound.io.validation import check_features_finite
from pacbound.io.validation import check_label_array as _labels

SCALES = ("auto", "none")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``x`` (float32, one example per row), labels ``y`` (int64) and provenance.

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
class Features:
    """Inputs without labels (:func:`load_features`): ``x`` as in :class:`Dataset`, and the
    provenance (``num_classes`` is ``None``)."""

    x: Tensor
    provenance: DatasetProvenance

    @property
    def n(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class _Options:
    """The format options of one load, checked."""

    x_key: str
    y_key: str
    csv_delimiter: str
    input_shape: tuple[int, ...] | str | None
    scale: str


def load_dataset(
    path: str | os.PathLike[str],
    *,
    split: str | Split = Split.TRAIN,
    label_column: str | int | None = None,
    label_map: LabelMap | str | None = None,
    normalize: Normalization | str | None = None,
    subset: int | Sequence[int] | None = None,
    x_key: str = "x",
    y_key: str = "y",
    csv_delimiter: str = ",",
    input_shape: Sequence[int] | str | None = None,
    scale: str = "auto",
    option: str = "--data",
) -> Dataset:
    """Read a data set and check it (non-empty, matching counts, integer labels, finite).

    ``split`` picks the IDX files (``train`` or ``t10k``/``test``); ``label_column`` names or
    indexes the CSV label column; ``x_key``/``y_key`` name the arrays of a ``.npz`` or
    ``.safetensors`` file; ``input_shape`` and ``scale`` override the shape and scaling rules
    (module docstring); ``subset`` is a count (the first k examples) or explicit indices,
    applied last. Everything is recorded in the provenance. ``option`` is the command-line
    option errors name (``--data``, ``--heldout``, …).
    """
    opts = _options(x_key, y_key, csv_delimiter, input_shape, scale)
    lmap = parse_label_map(label_map) if isinstance(label_map, str) else label_map
    loaded = _load(path, split, opts, normalize, label_column, labels=True, option=option)
    where = f"{option} {loaded.source}"
    assert loaded.raw_y is not None
    y = _labels(loaded.raw_y, n=len(loaded.x), source=where)
    if lmap is not None:
        y = lmap.apply(y, source=where)
    num_classes = lmap.num_classes if lmap is not None else int(y.max()) + 1
    x, indices = _subset(loaded.x, subset)
    if indices is not None:
        y = y[indices]
    provenance = loaded.provenance(x, indices, num_classes=num_classes, label_map=lmap)
    return Dataset(_contiguous(x), y, num_classes, provenance)


def load_features(
    path: str | os.PathLike[str],
    *,
    split: str | Split = Split.TRAIN,
    label_column: str | int | None = None,
    normalize: Normalization | str | None = None,
    subset: int | Sequence[int] | None = None,
    x_key: str = "x",
    csv_delimiter: str = ",",
    input_shape: Sequence[int] | str | None = None,
    scale: str = "auto",
    option: str = "--data",
) -> Features:
    """Read inputs WITHOUT labels (``--unlabeled``), with :func:`load_dataset`'s rules.

    Only the features are read: the IDX images file (a labels file is ignored), the ``x_key``
    array of a ``.npz``/``.safetensors`` file (other arrays ignored), ``x.npy`` of a folder,
    or every CSV column but a label column (``label_column``, or a header column named like a
    label, :data:`~pacbound.io.tabular.LABEL_COLUMN_NAMES`; dropped and recorded). The
    provenance lists exactly the files read, with their sha256, and ``num_classes`` ``None``.
    """
    opts = _options(x_key, "y", csv_delimiter, input_shape, scale)
    loaded = _load(path, split, opts, normalize, label_column, labels=False, option=option)
    x, indices = _subset(loaded.x, subset)
    provenance = loaded.provenance(x, indices, num_classes=None, label_map=None)
    return Features(_contiguous(x), provenance)


def recorded_load_options(record: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`load_dataset` that repeat the load a provenance
    record (``DatasetProvenance.to_dict()``) describes, except the path and normalization.

    Records written before the shape and scaling fields existed get the rules of that time.
    """
    options: dict[str, Any] = {
        "split": record.get("split") or "train",
        "label_column": record.get("label_column"),
        "label_map": record.get("label_map"),
        "subset": record.get("subset_indices"),
    }
    for key in ("x_key", "y_key", "csv_delimiter"):
        if record.get(key) is not None:
            options[key] = record[key]
    shape = record.get("input_shape")
    options["input_shape"] = LEGACY_CHANNEL_AXIS if shape is None else tuple(shape)
    options["scale"] = "none" if record.get("scaling") == "none" else "auto"
    return options


def _options(
    x_key: str, y_key: str, delimiter: str, input_shape: Sequence[int] | str | None, scale: str
) -> _Options:
    if scale not in SCALES:
        raise InvalidInputError(
            f"--scale {scale!r}: choose auto (uint8 images / 255) or none", param="--scale"
        )
    shape: tuple[int, ...] | str | None
    if isinstance(input_shape, str) and input_shape != LEGACY_CHANNEL_AXIS:
        shape = parse_input_shape(input_shape)
    elif input_shape is None or isinstance(input_shape, str):
        shape = input_shape
    else:
        shape = tuple(int(v) for v in input_shape)
    for option, key in (("--x-key", x_key), ("--y-key", y_key)):
        if not key:
            raise InvalidInputError(f"{option} is empty; name an array", param=option)
    return _Options(x_key, y_key, parse_delimiter(delimiter), shape, scale)


@dataclass(frozen=True, eq=False)
class _Loaded:
    """Features after the shape and scaling rules, with what the provenance needs."""

    source: Path
    fmt: DataFormat
    split: Split
    opts: _Options
    x: Any  # a Tensor, or LazyFeatures for a .npy folder
    files: tuple[Path, ...]
    raw_y: np.ndarray | None
    label_column: str | None
    stored: np.ndarray  # only dtype and shape are used
    scaled: bool
    reshape: str | None
    normalization: Normalization | None

    def provenance(
        self,
        x: Any,
        indices: Tensor | None,
        *,
        num_classes: int | None,
        label_map: LabelMap | None,
    ) -> DatasetProvenance:
        keyed = self.fmt in (DataFormat.NPZ, DataFormat.SAFETENSORS)
        norm = self.normalization
        return DatasetProvenance(
            path=str(self.source),
            format=self.fmt.value,
            files=tuple(FileRecord.of(f) for f in self.files),
            n=len(x),
            num_classes=num_classes,
            split=self.split.value if self.fmt is DataFormat.IDX else None,
            label_column=self.label_column,
            label_map=label_map.text if label_map is not None else None,
            normalization=norm.describe() if norm is not None else None,
            scaled_to_unit=self.scaled,
            subset_indices=None if indices is None else tuple(indices.tolist()),
            x_key=self.opts.x_key if keyed else None,
            y_key=self.opts.y_key if keyed and num_classes is not None else None,
            csv_delimiter=self.opts.csv_delimiter if self.fmt is DataFormat.CSV else None,
            stored_dtype=str(self.stored.dtype),
            stored_shape=tuple(int(d) for d in self.stored.shape[1:]),
            input_shape=tuple(int(d) for d in x.shape[1:]),
            reshape=self.reshape,
            scaling="uint8/255" if self.scaled else "none",
        )


def _load(
    path: str | os.PathLike[str],
    split: str | Split,
    opts: _Options,
    normalize: Normalization | str | None,
    label_column: str | int | None,
    *,
    labels: bool,
    option: str,
) -> _Loaded:
    source = Path(path)
    chosen, fmt = split_of(split), detect_format(source, option)
    where = f"{option} {source}"
    norm = parse_normalization(normalize) if isinstance(normalize, str) else normalize
    if fmt is DataFormat.NPY:
        names = (FEATURES_FILE, LABELS_FILE) if labels else (FEATURES_FILE,)
        stored = open_npy(source, FEATURES_FILE, mmap=True, option=option)
        raw_y = open_npy(source, LABELS_FILE, mmap=False, option=option) if labels else None
        files = tuple(check_file(source / name, option) for name in names)
        label_column = None
    else:
        raw = _read(source, fmt, chosen, opts, label_column, labels=labels, option=option)
        stored, raw_y, files, label_column = raw.x, raw.y, raw.files, raw.label_column
    _check_feature_array(stored, where)
    scaled = opts.scale == "auto" and stored.dtype == np.uint8
    images = "IDX images" if fmt is DataFormat.IDX else None
    if images is None and stored.dtype == np.uint8:
        images = "uint8 N×H×W images"
    shape, reshape = example_shape(stored.shape, opts.input_shape, images=images, where=where)
    if fmt is DataFormat.NPY:
        lazy = LazyFeatures(stored, normalization=norm, scale=scaled, example_shape=shape)
        lazy.check_finite(where)
        lazy[:1]  # validates the normalization against the channel axis
        x: Any = lazy
    else:
        x = _in_memory(stored, scaled, shape, norm, where)
    label_name = None if label_column is None else str(label_column)
    return _Loaded(
        source, fmt, chosen, opts, x, files, raw_y, label_name, stored, scaled, reshape, norm
    )


def _in_memory(
    stored: np.ndarray,
    scaled: bool,
    shape: tuple[int, ...],
    norm: Normalization | None,
    where: str,
) -> Tensor:
    # A fresh, writable float32 array in one pass (np.frombuffer views are read-only).
    if scaled:
        values = np.divide(stored, np.float32(255.0), dtype=np.float32)
    else:
        values = stored.astype(np.float32)
    x = torch.from_numpy(values).reshape(values.shape[0], *shape)
    check_features_finite(x, where)
    if norm is not None:
        x = norm.apply(x, source=where)
    return x


def _read(
    source: Path,
    fmt: DataFormat,
    split: Split,
    opts: _Options,
    label_column: str | int | None,
    *,
    labels: bool,
    option: str,
) -> RawData:
    y_key = opts.y_key if labels else None
    if fmt is DataFormat.IDX:
        return read_idx_folder(source, split.value, labels=labels, option=option)
    file = check_file(source, option)
    if fmt is DataFormat.NPZ:
        return read_npz(file, opts.x_key, y_key, option)
    if fmt is DataFormat.SAFETENSORS:
        return read_safetensors(file, opts.x_key, y_key, option)
    return read_csv(file, label_column, delimiter=opts.csv_delimiter, labels=labels, option=option)


def _subset(x: Any, subset: int | Sequence[int] | None) -> tuple[Any, Tensor | None]:
    indices = _subset_indices(subset, len(x))
    if indices is None:
        return x, None
    return (x.view_rows(indices) if isinstance(x, LazyFeatures) else x[indices]), indices


def _contiguous(x: Any) -> Tensor:
    return cast(Tensor, x) if isinstance(x, LazyFeatures) else x.contiguous()


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

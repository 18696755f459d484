"""Where a model or data set came from: file digests and small frozen records for reports."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacbound.errors import InvalidInputError

_CHUNK = 1 << 20


def check_file(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` as a :class:`Path` that exists, is a regular file and can be read."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{option}: {p} does not exist; check the path", param=option)
    if p.is_dir():
        raise InvalidInputError(
            f"{option}: {p} is a directory, but a file was expected; name the file inside it",
            param=option,
        )
    if not os.access(p, os.R_OK):
        raise InvalidInputError(
            f"{option}: {p} is not readable (permission denied); fix its permissions",
            param=option,
        )
    return p


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """One input file: its path as given, size in bytes and SHA-256."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path) -> FileRecord:
        return cls(path=str(path), sha256=sha256_file(path), bytes=path.stat().st_size)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class CheckpointProvenance:
    """A checkpoint file, its format, and how its tensors were found in it.

    ``nested_key`` is the key of the state dict inside the file (``"state_dict"``,
    ``"model"``, …) or ``None`` when the file holds it at the top level; ``stripped_prefix``
    is a ``"module."`` prefix removed from every name (DataParallel checkpoints).
    """

    file: FileRecord
    format: str
    nested_key: str | None = None
    stripped_prefix: str | None = None
    unsafe_pickle: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.file.to_dict(),
            "format": self.format,
            "nested_key": self.nested_key,
            "stripped_prefix": self.stripped_prefix,
            "unsafe_pickle": self.unsafe_pickle,
        }


@dataclass(frozen=True)
class ModelProvenance:
    """A loaded model: its checkpoint, architecture (``None`` for a ``.pt2`` program) and any
    explicit dtype conversions (``"name: float16 -> float32"``)."""

    checkpoint: CheckpointProvenance
    architecture: str | None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    dtype_conversions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint.to_dict(),
            "architecture": self.architecture,
            "arch_kwargs": dict(self.arch_kwargs),
            "dtype_conversions": list(self.dtype_conversions),
        }


@dataclass(frozen=True)
class DatasetProvenance:
    """A loaded data set: where it came from and every transformation applied to it.

    ``subset_indices`` are the indices (into the file's examples, after the split) that were
    kept, or ``None`` when every example was used. ``num_classes`` is ``None`` for inputs
    read without labels. ``x_key``/``y_key`` are the arrays read from a ``.npz`` or
    ``.safetensors`` file, ``csv_delimiter`` the separator of a CSV file (``None`` for other
    formats). ``stored_dtype`` and ``stored_shape`` (per example) describe the file's
    features; ``input_shape`` (per example) is what the model was given, ``reshape`` why it
    differs (``None`` when it does not), ``scaling`` ``"uint8/255"`` or ``"none"``.
    """

    path: str
    format: str
    files: tuple[FileRecord, ...]
    n: int
    num_classes: int | None
    split: str | None = None
    label_column: str | None = None
    label_map: str | None = None
    normalization: str | None = None
    scaled_to_unit: bool = False
    subset_indices: tuple[int, ...] | None = None
    x_key: str | None = None
    y_key: str | None = None
    csv_delimiter: str | None = None
    stored_dtype: str | None = None
    stored_shape: tuple[int, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    reshape: str | None = None
    scaling: str | None = None

    def to_dict(self) -> dict[str, Any]:
        indices = self.subset_indices
        return {
            "path": self.path,
            "format": self.format,
            "files": [f.to_dict() for f in self.files],
            "n": self.n,
            "num_classes": self.num_classes,
            "split": self.split,
            "label_column": self.label_column,
            "label_map": self.label_map,
            "normalization": self.normalization,
            "scaled_to_unit": self.scaled_to_unit,
            "subset_indices": None if indices is None else list(indices),
            "x_key": self.x_key,
            "y_key": self.y_key,
            "csv_delimiter": self.csv_delimiter,
            "stored_dtype": self.stored_dtype,
            "stored_shape": None if self.stored_shape is None else list(self.stored_shape),
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "reshape": self.reshape,
            "scaling": self.scaling,
        }

"""The readers behind :func:`pacbound.io.load_dataset`: each returns the stored arrays as is.

An MNIST IDX folder, a ``.npz`` or a ``.safetensors`` file; CSV lives in
:mod:`pacbound.io.tabular`. Labels are read only when asked (``y_key`` given, or
``labels=True`` for IDX): an unlabeled input needs only its features. No reader converts,
scales or reshapes anything; that is the pipeline's job, and it records what it does.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from pacbound.errors import InvalidInputError
from pacbound.io.idx import read_idx
from pacbound.io.provenance import check_file
from pacbound.io.streaming import is_npy_folder


class DataFormat(str, Enum):
    IDX = "idx"
    NPZ = "npz"
    SAFETENSORS = "safetensors"
    CSV = "csv"
    NPY = "npy"  # a folder with x.npy and y.npy, streamed


class Split(str, Enum):
    TRAIN = "train"
    TEST = "test"


IDX_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
#: How many key or column names an error message lists before "… (N in all)".
SHOWN_NAMES = 8


@dataclass(frozen=True, eq=False)
class RawData:
    """Arrays as stored (``y`` is ``None`` for features read without labels)."""

    x: np.ndarray
    y: np.ndarray | None
    files: tuple[Path, ...]
    label_column: str | None = None


def name_list(names: list[str], *, quote: bool = True) -> str:
    """``'a', 'b', …`` with at most :data:`SHOWN_NAMES` names, so error lines stay short."""
    shown = [repr(n) if quote else n for n in names[:SHOWN_NAMES]]
    more = f", … ({len(names)} in all)" if len(names) > SHOWN_NAMES else ""
    return (", ".join(shown) + more) if names else "none"


def split_of(split: str | Split) -> Split:
    try:
        return Split(split)
    except ValueError:
        raise InvalidInputError(
            f"--split {split!r}: choose one of {', '.join(s.value for s in Split)}",
            param="--split",
        ) from None


def detect_format(path: Path, option: str = "--data") -> DataFormat:
    if is_npy_folder(path):
        return DataFormat.NPY
    if path.is_dir():
        return DataFormat.IDX
    suffix = path.suffix.lower().lstrip(".")
    if suffix in {f.value for f in DataFormat if f not in (DataFormat.IDX, DataFormat.NPY)}:
        return DataFormat(suffix)
    if not path.exists():
        raise InvalidInputError(f"{option}: {path} does not exist; check the path", param=option)
    raise InvalidInputError(
        f"{option}: cannot tell the format of {path}; give an MNIST IDX folder, a folder with "
        "x.npy and y.npy (streamed), or a .npz, .safetensors or .csv file",
        param=option,
    )


def data_format(path: str | os.PathLike[str]) -> DataFormat | None:
    """The format :func:`load_dataset` would read ``path`` as, or ``None`` if it cannot tell."""
    try:
        return detect_format(Path(path))
    except InvalidInputError:
        return None


def read_idx_folder(folder: Path, split: str, *, labels: bool, option: str = "--data") -> RawData:
    """The images (and, with ``labels``, the labels) of one split of an MNIST IDX folder."""
    images = find_idx(folder, split, "images", option)
    x = read_idx(check_file(images, option), ndim=3, option=option)
    if not labels:
        return RawData(x, None, (images,))
    labels_file = find_idx(folder, split, "labels", option)
    y = read_idx(check_file(labels_file, option), ndim=1, option=option)
    if x.shape[0] != y.shape[0]:
        raise InvalidInputError(
            f"{option} {folder}: {images.name} has {x.shape[0]} images but {labels_file.name} has "
            f"{y.shape[0]} labels; use files from the same split and release",
            param=option,
        )
    return RawData(x, y, (images, labels_file))


def find_idx(folder: Path, split: str, kind: str, option: str = "--data") -> Path:
    candidates = sorted(
        p
        for p in folder.iterdir()
        if p.name.startswith(tuple(f"{prefix}-{kind}" for prefix in IDX_PREFIXES[split]))
        and "idx" in p.name
    )
    if not candidates:
        expected = f"{IDX_PREFIXES[split][0]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        raise InvalidInputError(
            f"{option} {folder}: no {split} {kind} file ({expected}[.gz]) in this folder; "
            "point --data to a folder with the MNIST IDX files, or change --split",
            param=option,
        )
    raw = [p for p in candidates if p.suffix != ".gz"]
    return (raw or candidates)[0]


def read_npz(file: Path, x_key: str, y_key: str | None, option: str = "--data") -> RawData:
    wanted = [k for k in (x_key, y_key) if k is not None]
    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = list(archive.files)
            arrays = {key: archive[key] for key in wanted if key in keys}
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise InvalidInputError(
            f"{option}: {file} holds object arrays, which would need pickle ({_short(exc)}); "
            "save numeric arrays with np.savez(path, x=..., y=...)",
            param=option,
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidInputError(
            f"{option}: {file} is not a readable .npz file ({_short(exc)}); save it with "
            "np.savez(path, x=..., y=...)",
            param=option,
        ) from None
    return _pick(arrays, keys, file, x_key, y_key, option)


def read_safetensors(file: Path, x_key: str, y_key: str | None, option: str = "--data") -> RawData:
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            arrays = {
                k: handle.get_tensor(k).numpy()
                for k in (x_key, y_key)
                if k is not None and k in keys
            }
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise InvalidInputError(
            f"{option}: {file} is not a valid safetensors file ({_short(exc)}); save it with "
            "safetensors.torch.save_file({'x': x, 'y': y}, path)",
            param=option,
        ) from None
    return _pick(arrays, keys, file, x_key, y_key, option)


def _pick(
    arrays: dict[str, Any],
    keys: list[str],
    file: Path,
    x_key: str,
    y_key: str | None,
    option: str,
) -> RawData:
    missing = [k for k in (x_key, y_key) if k is not None and k not in arrays]
    if missing:
        which = " or ".join(
            f"--{'x' if k == x_key else 'y'}-key {k!r}" for k in dict.fromkeys(missing)
        )
        raise InvalidInputError(
            f"{option}: {file} has no array for {which} (it has {name_list(keys)}); name the "
            "arrays with --x-key and --y-key",
            param="--x-key" if x_key in missing else "--y-key",
        )
    y = None if y_key is None else np.asarray(arrays[y_key])
    return RawData(np.asarray(arrays[x_key]), y, (file,))


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

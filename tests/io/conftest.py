"""Small fixtures built at test time: checkpoints, data files and IDX folders in tmp_path."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pacbound.models import mlp

MNIST = Path(__file__).resolve().parents[2] / "examples" / "data" / "mnist"


def small_mlp(num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return mlp(in_features=16, hidden=[8], num_classes=num_classes)


def save_safetensors(path: Path, module_or_state: torch.nn.Module | dict) -> Path:
    state = (
        module_or_state.state_dict()
        if isinstance(module_or_state, torch.nn.Module)
        else module_or_state
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None) -> Path:
    """An IDX file (gzipped when the name ends in .gz) holding a uint8 array."""
    code = 0x0800 | array.ndim if magic is None else magic
    header = struct.pack(">I", code) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_folder(folder: Path, n: int = 12, *, gz: bool = True, seed: int = 0) -> Path:
    """A tiny MNIST-style folder: n train and n//2 test images of 4×4 pixels, labels 0-9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 256, size=(count, 4, 4), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return folder


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    with open(path, "wb") as handle:
        np.savez(handle, x=x, y=y)
    return path


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"bundled MNIST not found in {MNIST} (copy it from shared/data/mnist)")
    return MNIST

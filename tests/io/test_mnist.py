"""The bundled MNIST copy: reference counts from shared/data/README.md, and load time."""

from __future__ import annotations

import gzip
import hashlib
import time
from pathlib import Path

import pytest
import torch

from pacbound.io import load_dataset

# shared/data/README.md: sha256 of the uncompressed files, and the label counts.
UNCOMPRESSED_SHA256 = {
    "train-images-idx3-ubyte.gz": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    ),
    "train-labels-idx1-ubyte.gz": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    ),
}
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_bundled_files_are_the_reference_files(mnist_dir: Path) -> None:
    for name, digest in UNCOMPRESSED_SHA256.items():
        data = gzip.decompress((mnist_dir / name).read_bytes())
        assert hashlib.sha256(data).hexdigest() == digest, name


def test_train_split_matches_reference_counts_and_mean(mnist_dir: Path) -> None:
    start = time.perf_counter()
    train = load_dataset(mnist_dir, split="train")
    seconds = time.perf_counter() - start
    assert train.x.shape == (60000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == TRAIN_COUNTS
    # mean training pixel 33.3184 of 255 (shared/data/README.md)
    assert float(train.x.double().mean()) * 255 == pytest.approx(33.3184, abs=5e-5)
    assert train.num_classes == 10
    assert seconds < 10.0  # the ≤ 1.5 s target is measured by benchmarks/bench_load_mnist.py


def test_test_split_counts_and_binary_map(mnist_dir: Path) -> None:
    test = load_dataset(mnist_dir, split="test", label_map="0-4:0,5-9:1")
    assert test.n == 10000
    assert torch.bincount(test.y).tolist() == [sum(TEST_COUNTS[:5]), sum(TEST_COUNTS[5:])]
    assert test.num_classes == 2
    assert test.provenance.files[0].path.endswith("t10k-images-idx3-ubyte.gz")


def test_mnist_normalization(mnist_dir: Path) -> None:
    test = load_dataset(mnist_dir, split="test", normalize="mnist", subset=1000)
    raw = load_dataset(mnist_dir, split="test", subset=1000)
    assert torch.allclose(test.x, (raw.x - 0.1307) / 0.3081, atol=1e-6)

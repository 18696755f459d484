"""Data sets from IDX folders, .npz, .safetensors and .csv, with their transforms and provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pacbound.errors import InvalidInputError
from pacbound.io import load_dataset, parse_label_map, parse_normalization
from tests.io.conftest import write_idx_folder, write_npz


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_train_and_test(tmp_path: Path, gz: bool) -> None:
    folder = write_idx_folder(tmp_path / "idx", n=12, gz=gz)
    train = load_dataset(folder)
    test = load_dataset(folder, split="test")
    assert train.x.shape == (12, 1, 4, 4) and train.x.dtype == torch.float32
    assert test.n == 6
    assert train.y.tolist() == [i % 10 for i in range(12)]
    assert train.y.dtype == torch.int64
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert train.num_classes == 10
    prov = train.provenance.to_dict()
    ext = ".gz" if gz else ""
    assert [Path(f["path"]).name for f in prov["files"]] == [
        f"train-images-idx3-ubyte{ext}",
        f"train-labels-idx1-ubyte{ext}",
    ]
    for record in prov["files"]:
        assert record["sha256"] == hashlib.sha256(Path(record["path"]).read_bytes()).hexdigest()
    assert prov["format"] == "idx" and prov["split"] == "train" and prov["scaled_to_unit"]


def test_npz_uint8_images_are_scaled_exactly(tmp_path: Path) -> None:
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8).repeat(3, axis=0)
    path = write_npz(tmp_path / "d.npz", x, np.array([0, 1, 2]))
    data = load_dataset(path)
    assert data.x.shape == (3, 1, 2, 2)
    expected = torch.tensor([[0.0, 1.0], [0.2, 0.4]], dtype=torch.float32)  # k/255 in float32
    assert torch.equal(data.x[0, 0], expected)
    assert data.provenance.format == "npz"


def test_npz_float_features_are_kept_and_integral_float_labels_accepted(tmp_path: Path) -> None:
    x = np.linspace(-3.0, 3.0, 12).reshape(4, 3)
    path = write_npz(tmp_path / "d.npz", x, np.array([0.0, 1.0, 1.0, 0.0]))
    data = load_dataset(path)
    assert torch.allclose(data.x, torch.from_numpy(x).float())
    assert data.y.tolist() == [0, 1, 1, 0]
    assert not data.provenance.scaled_to_unit


def test_safetensors_data_set(tmp_path: Path) -> None:
    x = torch.rand(5, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 4])
    path = tmp_path / "d.safetensors"
    save_file({"x": x, "y": y}, str(path))
    data = load_dataset(path, normalize="0.5/0.5/0.5,0.25/0.25/0.25")
    assert torch.allclose(data.x, (x - 0.5) / 0.25)
    assert data.num_classes == 5
    assert data.provenance.normalization == "mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]"


def test_csv_with_header_named_and_indexed_label_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,label,b\n1.5,0,2\n-1,2,3e1\n0,1,0\n")
    default = load_dataset(path)
    assert default.y.tolist() == [0, 2, 1]
    assert default.x.tolist() == [[1.5, 2.0], [-1.0, 30.0], [0.0, 0.0]]
    assert default.provenance.label_column == "label"
    by_index = load_dataset(path, label_column=2)
    assert by_index.y.tolist() == [2, 30, 0]
    assert by_index.provenance.label_column == "b"
    by_text_index = load_dataset(path, label_column="-1")
    assert by_text_index.y.tolist() == [2, 30, 0]


def test_csv_without_header_uses_last_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("0.1,0.2,1\n0.3,0.4,0\n")
    data = load_dataset(path)
    assert data.y.tolist() == [1, 0]
    assert data.x.shape == (2, 2)
    assert data.provenance.label_column == "2"


def test_label_map_and_subset_are_recorded(tmp_path: Path) -> None:
    folder = write_idx_folder(tmp_path / "idx", n=20)
    data = load_dataset(folder, label_map="0-4:0,5-9:1", subset=[3, 7, 11, 19])
    assert data.y.tolist() == [0, 1, 0, 1]  # digits 3, 7, 1, 9
    assert data.num_classes == 2
    prov = data.provenance.to_dict()
    assert prov["subset_indices"] == [3, 7, 11, 19]
    assert prov["n"] == 4
    assert prov["label_map"] == "0-4:0,5-9:1"
    first = load_dataset(folder, subset=5)
    assert first.provenance.subset_indices == (0, 1, 2, 3, 4)
    full = load_dataset(folder)
    assert torch.equal(first.x, full.x[:5])


def test_label_map_parsing() -> None:
    m = parse_label_map("3:0, 8:1")
    assert m.pairs == ((3, 0), (8, 1))
    assert m.apply(torch.tensor([8, 3, 3]), source="s").tolist() == [1, 0, 0]
    with pytest.raises(InvalidInputError, match=r"does not cover label\(s\) 5 found in s"):
        m.apply(torch.tensor([3, 5]), source="s")
    with pytest.raises(InvalidInputError, match="label 4 is mapped twice"):
        parse_label_map("0-4:0,4-9:1")
    with pytest.raises(InvalidInputError, match="runs backwards"):
        parse_label_map("9-5:1")


def test_normalization_parsing_and_application() -> None:
    mnist = parse_normalization("MNIST")
    assert (mnist.mean, mnist.std) == ((0.1307,), (0.3081,))
    x = torch.full((2, 1, 2, 2), 0.4388)
    assert torch.allclose(mnist.apply(x.clone(), source="s"), torch.ones_like(x), atol=1e-4)
    with pytest.raises(InvalidInputError, match="standard deviations positive"):
        parse_normalization("0.5,0")
    with pytest.raises(InvalidInputError, match="gives 2 channel values but s has 3 channels"):
        parse_normalization("0/0,1/1").apply(torch.zeros(1, 3, 2, 2), source="s")


@pytest.mark.parametrize(
    ("subset", "match"),
    [
        (0, "subset of 0 examples requested from a data set of 12"),
        ([1, 1], "subset indices repeat"),
        ([12], r"must lie in \[0, 12\)"),
        ([], "the subset is empty"),
    ],
)
def test_bad_subsets(tmp_path: Path, subset: object, match: str) -> None:
    folder = write_idx_folder(tmp_path / "idx", n=12)
    with pytest.raises(InvalidInputError, match=match):
        load_dataset(folder, subset=subset)  # type: ignore[arg-type]

"""Streamed data sets: a folder of x.npy/y.npy, memory-mapped and read a batch at a time."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pacbound.certify.gaussian import certify_gaussian
from pacbound.certify.gaussian_options import GaussianOptions
from pacbound.cli.main import cli
from pacbound.errors import InvalidInputError
from pacbound.io import load_dataset
from pacbound.io.streaming import LazyFeatures
from pacbound.models import mlp
from pacbound.posterior.priors import PriorMean, PriorTrainingRecipe, ScaleGrid


def _write(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    np.savez(folder.parent / f"{folder.name}.npz", x=x, y=y)
    return folder


def _images(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 4, 4), dtype=np.uint8), np.arange(n) % 3


def test_lazy_features_read_only_the_requested_rows() -> None:
    x, _ = _images()
    lazy = LazyFeatures(x, example_shape=(1, 4, 4))
    full = torch.from_numpy(np.divide(x, np.float32(255.0), dtype=np.float32)).unsqueeze(1)
    assert len(lazy) == 60 and lazy.shape == (60, 1, 4, 4) and lazy.ndim == 4
    assert lazy.dtype == torch.float32 and lazy.scaled
    assert torch.equal(lazy[10:20], full[10:20])
    assert torch.equal(lazy[55:100], full[55:])
    assert torch.equal(lazy[::7], full[::7])
    assert torch.equal(lazy[-1], full[-1]) and torch.equal(lazy[3], full[3])
    order = torch.tensor([7, 2, 2, 59, -2])
    assert torch.equal(lazy[order], full[order])
    assert torch.equal(lazy[np.array([4, 1])], full[[4, 1]])
    view = lazy.view_rows(torch.tensor([9, 3, 40]))
    assert view.shape == (3, 1, 4, 4)
    assert torch.equal(view[1:], full[[3, 40]])
    assert torch.equal(view.view_rows(torch.tensor([2, 0]))[0:2], full[[40, 9]])
    with pytest.raises(IndexError, match="out of range"):
        lazy[torch.tensor([60])]


def test_lazy_batches_are_fresh_tensors_and_the_map_is_read_only(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.arange(24, dtype=np.float32).reshape(6, 4))
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    lazy = LazyFeatures(mapped)
    batch = lazy[0:2]
    assert isinstance(batch, torch.Tensor) and batch.device.type == "cpu"
    batch.zero_()
    assert lazy[0:2].sum() == 28.0  # the write went to a copy, not to the file
    assert lazy.shape == (6, 4) and not lazy.scaled
    assert torch.equal(lazy[torch.tensor([5])].to("cpu"), torch.tensor([[20.0, 21, 22, 23]]))


def test_folder_loads_like_the_same_arrays_in_memory(tmp_path: Path) -> None:
    x, y = _images()
    folder = _write(tmp_path / "d", x, y)
    kwargs: dict[str, Any] = {"normalize": "mnist", "label_map": "0:0,1-2:1"}
    streamed = load_dataset(folder, **kwargs, subset=[5, 2, 50, 9])
    loaded = load_dataset(tmp_path / "d.npz", **kwargs, subset=[5, 2, 50, 9])
    assert isinstance(streamed.x, LazyFeatures)
    assert streamed.x.shape == loaded.x.shape
    assert torch.equal(streamed.x[0:4], loaded.x)
    assert torch.equal(streamed.y, loaded.y) and streamed.num_classes == 2
    prov, ref = streamed.provenance.to_dict(), loaded.provenance.to_dict()
    assert prov["format"] == "npy" and [Path(f["path"]).name for f in prov["files"]] == [
        "x.npy",
        "y.npy",
    ]
    for record in prov["files"]:
        assert record["sha256"] == hashlib.sha256(Path(record["path"]).read_bytes()).hexdigest()
    for key in ("n", "num_classes", "label_map", "normalization", "scaled_to_unit"):
        assert prov[key] == ref[key]
    for key in ("stored_dtype", "stored_shape", "input_shape", "reshape", "scaling"):
        assert prov[key] == ref[key]
    assert prov["subset_indices"] == [5, 2, 50, 9]


@pytest.mark.parametrize(
    "kwargs",
    [{"input_shape": (2, 8)}, {"scale": "none"}, {"input_shape": "16", "scale": "none"}],
)
def test_folder_applies_shape_and_scale_like_memory(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    x, y = _images()
    folder = _write(tmp_path / "d", x, y)
    streamed = load_dataset(folder, **kwargs)
    loaded = load_dataset(tmp_path / "d.npz", **kwargs)
    assert streamed.x.shape == loaded.x.shape
    assert torch.equal(streamed.x[:], loaded.x)
    rows = torch.tensor([7, 1])
    view = streamed.x.view_rows(rows)  # type: ignore[attr-defined]
    assert view.shape == (2, *loaded.x.shape[1:]) and torch.equal(view[0:2], loaded.x[rows])
    keys = ("stored_shape", "input_shape", "reshape", "scaling", "scaled_to_unit")
    assert {k: streamed.provenance.to_dict()[k] for k in keys} == {
        k: loaded.provenance.to_dict()[k] for k in keys
    }


def test_unlabeled_folder_needs_no_labels(tmp_path: Path) -> None:
    from pacbound.io import load_features

    x, _ = _images()
    folder = tmp_path / "u"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    feats = load_features(folder, subset=3)
    assert isinstance(feats.x, LazyFeatures) and feats.x.shape == (3, 1, 4, 4)
    assert feats.provenance.num_classes is None and feats.provenance.format == "npy"
    with pytest.raises(InvalidInputError, match=r"no y\.npy in this folder"):
        load_dataset(folder)


@pytest.mark.parametrize(
    ("x", "y", "pattern"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]], np.float32), np.array([0, 1]), "example 0 has NaN"),
        (np.zeros((3, 2), np.float32), np.array([0, 1]), "3 examples but labels of shape"),
        (np.zeros((0, 2), np.float32), np.zeros(0, np.int64), "no examples"),
        (np.zeros((2, 2), np.float32), np.array([0.5, 1.0]), "whole numbers"),
    ],
)
def test_bad_folders_are_refused(
    tmp_path: Path, x: np.ndarray, y: np.ndarray, pattern: str
) -> None:
    folder = _write(tmp_path / "bad", x, y)
    with pytest.raises(InvalidInputError, match=pattern):
        load_dataset(folder)


def test_missing_labels_and_pickled_arrays_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    np.save(folder / "x.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(InvalidInputError, match=r"y\.npy"):
        load_dataset(folder)
    np.save(folder / "y.npy", np.array([0, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInputError, match=r"not a readable \.npy"):
        load_dataset(folder)
    np.save(folder / "y.npy", np.array([0, 1]))
    with pytest.raises(InvalidInputError, match="--normalize gives 3 channel values"):
        load_dataset(folder, normalize="0.1/0.1/0.1,1/1/1")


class _CountingFeatures(LazyFeatures):
    """Records how many rows each read converts."""

    reads: ClassVar[list[int]] = []

    def _convert(self, block: np.ndarray) -> torch.Tensor:
        _CountingFeatures.reads.append(int(block.shape[0]))
        return super()._convert(block)


@pytest.mark.parametrize("prior", [PriorMean.ZERO, PriorMean.DATA])
def test_gaussian_pipeline_never_reads_the_whole_set_at_once(prior: PriorMean) -> None:
    x, y = _images(n=900)
    features = _CountingFeatures(x)
    _CountingFeatures.reads = []
    torch.manual_seed(0)
    options = GaussianOptions(
        prior=prior,
        prior_scales=ScaleGrid.log_spaced(1e-3, 1.0, 11),
        prior_recipe=PriorTrainingRecipe(epochs=1),
        mc_passes=1,
        batch_size=64,
        search_examples=100,
    )
    cert = certify_gaussian(
        mlp(in_features=16, hidden=[4], num_classes=3),
        features,  # type: ignore[arg-type]
        torch.from_numpy(y),
        options=options,
    )
    assert 0.0 < cert.value <= 1.0
    assert sum(_CountingFeatures.reads) >= cert.n_bound  # the MC pass read every bound row
    assert max(_CountingFeatures.reads) <= 256  # the determinism probe; batches are 64


@pytest.fixture(scope="module")
def image_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    x = np.clip(rng.normal(100 + 60 * y[:, None, None], 40, (300, 4, 4)), 0, 255).astype(np.uint8)
    _write(root / "train", x, y)
    torch.manual_seed(0)
    model = mlp(in_features=16, hidden=[8], num_classes=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "init.safetensors")
    xt = torch.from_numpy(x).float().div(255).sub(0.1307).div(0.3081)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(xt), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, root / "final.safetensors")
    return root


@pytest.mark.parametrize(
    "extra",
    [
        ("--init", "{root}/init.safetensors", "--prior-scales", "1e-3:1:61", "--mc-passes", "2"),
        ("--prior", "data", "--prior-epochs", "1", "--prior-scales", "1e-3:1:61"),
        ("--method", "quantize", "--levels", "4"),
        ("--method", "subspace", "--d", "10", "--levels", "4", "--subspace-epochs", "1"),
    ],
    ids=["gaussian-init", "gaussian-data-prior", "quantize", "subspace"],
)
def test_certify_on_a_memory_mapped_folder_equals_in_memory(
    image_task: Path, extra: tuple[str, ...]
) -> None:
    def run(data: Path) -> dict[str, Any]:
        args = [
            "certify",
            str(image_task / "final.safetensors"),
            "--arch",
            "mlp",
            "--arch-kwargs",
            '{"in_features": 16, "hidden": [8], "num_classes": 2}',
            "--data",
            str(data),
            "--normalize",
            "mnist",
            "--batch-size",
            "64",
            "--json",
            *(a.format(root=image_task) for a in extra),
        ]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.stderr
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc

    streamed, in_memory = run(image_task / "train"), run(image_task / "train.npz")
    assert streamed["inputs"]["data"]["format"] == "npy"
    assert json.dumps(streamed["results"], sort_keys=True) == json.dumps(
        in_memory["results"], sort_keys=True
    )

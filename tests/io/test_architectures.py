"""--arch parsing and importing, --arch-kwargs JSON, device resolution, the dry forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pacbound.errors import InvalidInputError
from pacbound.io import (
    check_model_data,
    load_dataset,
    load_model,
    parse_arch,
    parse_arch_kwargs,
    resolve_device,
)
from pacbound.io.architectures import build_module
from tests.io.conftest import save_safetensors, small_mlp, write_npz


def test_parse_arch_forms() -> None:
    assert parse_arch("mlp").builtin
    spec = parse_arch(" pkg.sub:Outer.make ")
    assert (spec.module, spec.attribute, spec.builtin) == ("pkg.sub", "Outer.make", False)
    with pytest.raises(InvalidInputError, match=r"expected package\.module:factory"):
        parse_arch("pkg-name:make")


def test_arch_kwargs_json() -> None:
    assert parse_arch_kwargs(None) == {}
    assert parse_arch_kwargs("  ") == {}
    assert parse_arch_kwargs('{"hidden": [600, 600], "num_classes": 2}') == {
        "hidden": [600, 600],
        "num_classes": 2,
    }


def test_factory_imported_from_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "arch_test_user_nets.py").write_text(
        "from torch import nn\n"
        "def tiny(width=4, classes=3):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.ReLU(),\n"
        "                         nn.Linear(width, classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    module = build_module(parse_arch("arch_test_user_nets:tiny"), {"width": 8})
    assert [p.shape for p in module.parameters()] == [(8, 16), (8,), (3, 8), (3,)]
    path = save_safetensors(tmp_path / "m.safetensors", small_mlp())
    model = load_model(path, arch="arch_test_user_nets:tiny", arch_kwargs={"width": 8})
    assert model.num_parameters == 16 * 8 + 8 + 8 * 3 + 3
    assert str(tmp_path) not in __import__("sys").path  # the path change is undone


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(InvalidInputError, match="--device 'gpu0' is not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_dry_forward_pass_reports_shapes(tmp_path: Path) -> None:
    model = load_model(
        save_safetensors(tmp_path / "m.safetensors", small_mlp()),
        arch="mlp",
        arch_kwargs={"in_features": 16, "hidden": [8], "num_classes": 3},
        device="cpu",
    )
    x = np.random.default_rng(0).random((300, 1, 4, 4))
    data = load_dataset(write_npz(tmp_path / "d.npz", x, np.arange(300) % 3))
    run = check_model_data(model, data, batch_size=256)
    assert run.input_shape == (256, 1, 4, 4)
    assert run.output_shape == (256, 3)
    assert run.num_outputs == 3
    assert not model.module.training
    binary = load_dataset(write_npz(tmp_path / "b.npz", x, np.arange(300) % 2), label_map="0:0,1:3")
    with pytest.raises(InvalidInputError, match="label 3 is outside"):
        check_model_data(model, binary)


class _Odd(torch.nn.Module):
    """A model with one parameter of the kind given (lazy, complex, integer or plain)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.fc = torch.nn.LazyLinear(2) if kind == "lazy" else torch.nn.Linear(3, 2)
        if kind == "complex":
            self.c = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
        if kind == "integer":
            self.k = torch.nn.Parameter(torch.arange(3), requires_grad=False)


def odd_model(kind: str) -> torch.nn.Module:
    return _Odd(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("lazy", r"lazy modules whose shapes are not set yet \(fc.weight, fc.bias\)"),
        ("complex", r"not real floating-point tensors: c \(torch.complex64\)"),
        ("integer", r"not real floating-point tensors: k \(torch.int64\)"),
    ],
)
def test_every_method_refuses_parameters_it_cannot_cover(kind: str, message: str) -> None:
    """Every command builds the model through build_module, so each refuses, naming the
    tensor, before any method draws (the Gaussian KL saw a complex weight's real part only)
    or quantizes (a complex weight lost its imaginary part) them."""
    with pytest.raises(InvalidInputError, match=message) as info:
        build_module(parse_arch("tests.io.test_architectures:odd_model"), {"kind": kind})
    assert info.value.param == "--arch"
    assert isinstance(
        build_module(parse_arch("tests.io.test_architectures:odd_model"), {"kind": "plain"}), _Odd
    )

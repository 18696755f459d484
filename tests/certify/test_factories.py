"""The compression factory for models that are their own architecture (.pt2, whole pickles):
nothing of the trained file but its structure reaches the decoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pacbound.certify.factories import (
    InitFileFactory,
    ResetFactory,
    architecture_factory,
    factory_for,
    theta0_sha256,
)
from pacbound.errors import InvalidInputError
from pacbound.io import load_model
from pacbound.models import convnet, mlp

CONV = {"channels": [4], "hidden": 8, "batch_norm": True}


class RawParameter(nn.Module):
    """A layer whose parameter no reset_parameters() re-draws."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.full((2,), 3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


class HiddenTensor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.offset = torch.ones(2)  # neither a parameter nor a buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.offset


def trained(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5)
    return module.eval()


def whole(tmp_path: Path, module: nn.Module) -> object:
    path = tmp_path / "whole.pt"
    torch.save(module, path)
    return load_model(path, unsafe_allow_pickle=True, device="cpu")


def test_pickled_model_is_reset_exactly_like_its_architecture(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loaded = whole(tmp_path, trained(convnet(**CONV)))  # type: ignore[arg-type]
    factory = factory_for(loaded, "subspace")  # type: ignore[arg-type]
    assert isinstance(factory, ResetFactory)
    seeded = architecture_factory("convnet", CONV)
    for seed in (0, 7):
        mine, theirs = factory(seed).state_dict(), seeded(seed).state_dict()
        assert list(mine) == list(theirs)
        for name in theirs:  # parameters and BatchNorm buffers alike
            assert torch.equal(mine[name], theirs[name]), name
    trained_weight = loaded.module.state_dict()["0.weight"]  # type: ignore[attr-defined]
    assert not torch.equal(factory(0).state_dict()["0.weight"], trained_weight)


def test_unreset_parameter_refused_for_subspace_zeroed_for_quantize(tmp_path: Path) -> None:
    loaded = whole(tmp_path, trained(RawParameter()))
    with pytest.raises(InvalidInputError, match=r"no reset_parameters\(\) re-draws scale"):
        factory_for(loaded, "subspace")(0)  # type: ignore[arg-type]
    fresh = factory_for(loaded, "quantize")(0)  # type: ignore[arg-type]
    assert torch.equal(fresh.scale, torch.zeros(2))  # type: ignore[arg-type]
    assert not torch.equal(fresh.linear.weight, loaded.module.linear.weight)  # type: ignore[attr-defined]


def test_hidden_tensors_are_refused(tmp_path: Path) -> None:
    loaded = whole(tmp_path, HiddenTensor())
    with pytest.raises(InvalidInputError, match=r"neither parameters nor saved buffers \(offset\)"):
        factory_for(loaded, "quantize")  # type: ignore[arg-type]


def test_program_factory_takes_theta0_from_init(tmp_path: Path) -> None:
    torch.manual_seed(0)
    init = mlp(in_features=4, hidden=[3], num_classes=2)
    net = trained(mlp(in_features=4, hidden=[3], num_classes=2))
    program = torch.export.export(
        net, (torch.rand(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, tmp_path / "p.pt2")
    save_file(
        {k: v.contiguous() for k, v in init.state_dict().items()}, tmp_path / "init.safetensors"
    )
    loaded = load_model(tmp_path / "p.pt2", device="cpu")
    factory = factory_for(loaded, "subspace", init=tmp_path / "init.safetensors")
    assert isinstance(factory, InitFileFactory)
    x = torch.rand(6, 4)
    assert torch.allclose(factory(3)(x), init(x))
    for name, p in factory(0).named_parameters():
        assert torch.equal(p, init.state_dict()[name])
    # without init, quantize gets zeros (it codes every parameter in the message)
    assert all(not p.any() for p in factory_for(loaded, "quantize")(0).parameters())


class ProgramConstants(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.register_buffer("shift", torch.ones(2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.shift + torch.tensor([0.5, 0.0])


def test_program_constants_are_refused(tmp_path: Path) -> None:
    """A copy of the program would keep them (as buffers) from the trained file."""
    program = torch.export.export(
        ProgramConstants().eval(),
        (torch.rand(2, 4),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    torch.export.save(program, tmp_path / "c.pt2")
    loaded = load_model(tmp_path / "c.pt2", device="cpu")
    with pytest.raises(InvalidInputError, match=r"neither parameters nor saved buffers \(shift, "):
        factory_for(loaded, "quantize")


def test_init_file_factory_fixes_theta0_and_hashes_content(tmp_path: Path) -> None:
    kwargs = {"in_features": 6, "hidden": [8], "num_classes": 2}
    torch.manual_seed(123)
    init = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    state = {k: v.detach().contiguous() for k, v in init.state_dict().items()}
    save_file(state, str(tmp_path / "init.safetensors"))
    torch.save(state, tmp_path / "init.pt")
    from_st = architecture_factory("mlp", kwargs, init=tmp_path / "init.safetensors")
    from_pt = architecture_factory("mlp", kwargs, init=tmp_path / "init.pt")
    seeded = architecture_factory("mlp", kwargs)
    for seed in (0, 7):
        model = from_st(seed)
        for name, value in model.state_dict().items():
            assert torch.equal(value, state[name])  # θ₀ is the file's, whatever the seed
    assert not torch.equal(seeded(0).state_dict()["1.weight"], state["1.weight"])
    assert isinstance(from_st, InitFileFactory) and isinstance(from_pt, InitFileFactory)
    assert from_st.init_sha256 == from_pt.init_sha256 == theta0_sha256(state)
    state["1.bias"] = state["1.bias"] + 1e-3
    assert theta0_sha256(state) != from_st.init_sha256

"""Loading checkpoints into architectures: formats, nesting, strict matching, provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from pacbound.errors import InvalidInputError, UsageError
from pacbound.io import (
    TensorKind,
    inspect_checkpoint,
    load_init_state,
    load_model,
    read_checkpoint,
)
from pacbound.models import convnet, mlp
from tests.io.conftest import save_safetensors, small_mlp

KW = {"in_features": 16, "hidden": [8], "num_classes": 3}


def assert_same_weights(module: nn.Module, reference: nn.Module) -> None:
    got, want = module.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_safetensors_round_trip_is_exact(tmp_path: Path) -> None:
    reference = small_mlp()
    path = save_safetensors(tmp_path / "m.safetensors", reference)
    model = load_model(path, arch="mlp", arch_kwargs=KW, device="cpu")
    assert_same_weights(model.module, reference)
    assert not model.module.training
    assert model.parameter_names == ("1.weight", "1.bias", "3.weight", "3.bias")
    assert model.num_parameters == 16 * 8 + 8 + 8 * 3 + 3
    assert model.buffers == ()
    assert all(p.requires_grad for p in model.module.parameters())
    prov = model.provenance.to_dict()
    assert prov["checkpoint"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["checkpoint"]["format"] == "safetensors"
    assert prov["architecture"] == "mlp"
    assert prov["arch_kwargs"] == KW


@pytest.mark.parametrize("key", [None, "state_dict", "model", "model_state_dict"])
def test_torch_state_dicts_plain_and_nested(tmp_path: Path, key: str | None) -> None:
    reference = small_mlp()
    state = reference.state_dict()
    payload = state if key is None else {key: state, "epoch": 7, "lr": 0.1}
    path = tmp_path / "m.pt"
    torch.save(payload, path)
    model = load_model(path, arch="mlp", arch_kwargs=KW, device="cpu")
    assert_same_weights(model.module, reference)
    assert model.provenance.checkpoint.nested_key == key
    assert model.provenance.checkpoint.unsafe_pickle is False


def test_data_parallel_prefix_is_stripped_and_recorded(tmp_path: Path) -> None:
    reference = small_mlp()
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)
    model = load_model(path, arch="mlp", arch_kwargs=KW, device="cpu")
    assert_same_weights(model.module, reference)
    assert model.provenance.checkpoint.stripped_prefix == "module."


def test_buffers_are_reported_apart_from_parameters(tmp_path: Path) -> None:
    net = convnet(channels=[4], hidden=8, batch_norm=True)
    path = save_safetensors(tmp_path / "bn.safetensors", net)
    model = load_model(
        path, arch="convnet", arch_kwargs={"channels": [4], "hidden": 8, "batch_norm": True}
    )
    assert model.buffer_names == ("1.running_mean", "1.running_var", "1.num_batches_tracked")
    assert model.num_buffer_elements == 4 + 4 + 1
    assert "1.weight" in model.parameter_names
    assert model.num_parameters == sum(p.numel() for p in net.parameters())


def test_float16_checkpoint_is_converted_explicitly(tmp_path: Path) -> None:
    reference = small_mlp()
    half = {k: v.half() for k, v in reference.state_dict().items()}
    path = save_safetensors(tmp_path / "half.safetensors", half)
    model = load_model(path, arch="mlp", arch_kwargs=KW, device="cpu")
    assert model.provenance.dtype_conversions == tuple(
        f"{k}: float16 -> float32" for k in reference.state_dict()
    )
    assert all(p.dtype == torch.float32 for p in model.module.parameters())
    assert torch.equal(model.module.state_dict()["1.weight"], half["1.weight"].float())


def test_exported_program_needs_no_arch(tmp_path: Path) -> None:
    net = small_mlp().eval()
    example = torch.rand(4, 16)
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    path = tmp_path / "net.pt2"
    torch.export.save(program, path)
    model = load_model(path, device="cpu")
    x = torch.rand(5, 16)
    assert torch.allclose(model.module(x), net(x))
    assert model.provenance.architecture is None
    assert model.provenance.checkpoint.format == "pt2"
    assert model.num_parameters == sum(p.numel() for p in net.parameters())
    with pytest.raises(UsageError, match=r"self-contained torch\.export program"):
        load_model(path, arch="mlp")


class Trusted:
    """A non-tensor object that only full unpickling can rebuild (harmless)."""

    def __init__(self, value: int) -> None:
        self.value = value


def test_unsafe_flag_allows_full_unpickling(tmp_path: Path) -> None:
    reference = small_mlp()
    path = tmp_path / "full.pt"
    torch.save({"state_dict": reference.state_dict(), "meta": Trusted(3)}, path)
    with pytest.raises(InvalidInputError, match="--unsafe-allow-pickle"):
        load_model(path, arch="mlp", arch_kwargs=KW)
    model = load_model(path, arch="mlp", arch_kwargs=KW, unsafe_allow_pickle=True)
    assert_same_weights(model.module, reference)
    assert model.provenance.checkpoint.unsafe_pickle is True


def test_init_state_matches_exactly(tmp_path: Path) -> None:
    trained = small_mlp()
    torch.manual_seed(1)
    init_net = mlp(**KW)
    model = load_model(
        save_safetensors(tmp_path / "trained.safetensors", trained), arch="mlp", arch_kwargs=KW
    )
    state = load_init_state(save_safetensors(tmp_path / "init.safetensors", init_net), model)
    assert list(state) == list(model.parameter_names)
    for name, tensor in init_net.state_dict().items():
        assert torch.equal(state[name], tensor)
        assert not torch.equal(state[name], trained.state_dict()[name])
    wrong = save_safetensors(tmp_path / "wrong.safetensors", small_mlp(num_classes=4))
    with pytest.raises(
        InvalidInputError,
        match=r"--init .*wrong.safetensors does not match the model: wrong shape: "
        r"3\.weight \(file \[4, 8\], model \[3, 8\]\); 3\.bias",
    ):
        load_init_state(wrong, model)


def test_inspect_without_arch_classifies_by_name(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "bn.safetensors", convnet(channels=[4], batch_norm=True))
    report = inspect_checkpoint(path)
    kinds = {t.name: t.kind for t in report.tensors}
    assert kinds["1.running_var"] is TensorKind.BUFFER
    assert kinds["0.weight"] is TensorKind.PARAMETER
    assert report.loads is None
    assert report.kinds_from == "names"
    assert report.num_buffer_elements == 4 + 4 + 1


def test_read_checkpoint_lists_every_tensor(tmp_path: Path) -> None:
    reference = small_mlp()
    path = save_safetensors(tmp_path / "m.safetensors", reference)
    ckpt = read_checkpoint(path)
    assert sorted(ckpt.tensors) == sorted(reference.state_dict())
    assert ckpt.provenance.file.bytes == path.stat().st_size


def test_count_non_finite_scans_in_chunks() -> None:
    from pacbound.io.checkpoints import count_non_finite

    t = torch.zeros(3_000_000)
    assert count_non_finite(t) == 0
    t[[5, 1_500_000, 2_999_999]] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    assert count_non_finite(t) == 3
    huge = torch.full((4,), 3e38)  # the sum overflows, yet every entry is finite
    assert count_non_finite(huge) == 0
    assert count_non_finite(torch.ones(3, dtype=torch.int64)) == 0


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(3, 3)
        self.b = torch.nn.Linear(3, 3)
        self.b.weight = self.a.weight


def test_a_tied_weight_saved_once_loads_tied(tmp_path: Path) -> None:
    """safetensors' save_model keeps one name of a shared tensor; the other name is filled
    from it and the tie survives (one parameter, not two)."""
    import sys

    from safetensors.torch import save_model

    from pacbound.io import load_init_state, load_model
    from pacbound.io.checkpoints import with_tied_names

    module = _Tied()
    save_model(module, str(tmp_path / "tied.safetensors"))
    (tmp_path / "tiedmod.py").write_text(
        "from tests.io.test_models import _Tied\n\ndef build():\n    return _Tied()\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        loaded = load_model(tmp_path / "tied.safetensors", arch="tiedmod:build", arch_kwargs={})
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tiedmod", None)
    got = loaded.module
    assert got.b.weight is got.a.weight and torch.equal(got.a.weight, module.a.weight)
    state = load_init_state(tmp_path / "tied.safetensors", loaded)
    assert torch.equal(state["b.weight"], module.a.weight.detach())
    forged = {k: v.detach() for k, v in module.state_dict().items()}
    forged["b.weight"] = forged["a.weight"] + 1
    with pytest.raises(InvalidInputError, match=r"one shared \(tied\) tensor"):
        with_tied_names(module, forged, source="CHECKPOINT x")

"""Reading the checkpoints users really have: prefixed names, whole pickles, .pt2 programs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pacbound.errors import InvalidInputError
from pacbound.io import load_init_state, load_model, read_checkpoint
from pacbound.io.checkpoints import program_module
from pacbound.io.models import match_state, suggest_strip_prefix
from tests.io.conftest import save_safetensors, small_mlp

KW = {"in_features": 16, "hidden": [8], "num_classes": 3}


def lightning(path: Path, module: nn.Module, prefix: str = "model.") -> Path:
    state = {f"{prefix}{k}": v for k, v in module.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 4, "global_step": 40}, path)
    return path


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["model.1.weight", "model.1.bias"], "model."),
        (["model.net.1.weight", "model.net.1.bias", "loss.weight"], "model.net."),
        (["1.weight", "1.bias"], None),  # nothing to strip
        (["model.1.weight", "other.1.bias"], None),  # no single prefix covers every name
    ],
)
def test_suggest_strip_prefix(names: list[str], expected: str | None) -> None:
    model = {"1.weight": 0, "1.bias": 0}
    assert suggest_strip_prefix(model, dict.fromkeys(names, 0)) == expected


def test_explicit_prefix_keeps_other_names_and_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "l.ckpt"
    state = {"model.a": torch.ones(2), "loss.w": torch.zeros(1)}
    torch.save({"state_dict": state, "epoch": 1}, path)
    ckpt = read_checkpoint(path, strip_prefix="model.")
    assert sorted(ckpt.tensors) == ["a", "loss.w"]
    assert ckpt.provenance.stripped_prefix == "model."
    assert ckpt.provenance.nested_key == "state_dict"


def test_explicit_prefix_on_safetensors(tmp_path: Path) -> None:
    reference = small_mlp()
    state = {f"net.{k}": v for k, v in reference.state_dict().items()}
    path = save_safetensors(tmp_path / "p.safetensors", state)
    model = load_model(path, arch="mlp", arch_kwargs=KW, strip_prefix="net.")
    assert torch.equal(model.module.state_dict()["1.weight"], reference.state_dict()["1.weight"])
    assert model.provenance.checkpoint.stripped_prefix == "net."


def test_init_takes_the_checkpoints_prefix_where_it_has_it(tmp_path: Path) -> None:
    trained, init = small_mlp(), small_mlp()
    with torch.no_grad():
        trained[1].weight.add_(1.0)
    model = load_model(
        lightning(tmp_path / "final.ckpt", trained),
        arch="mlp",
        arch_kwargs=KW,
        strip_prefix="model.",
    )
    prefixed = load_init_state(lightning(tmp_path / "init.ckpt", init), model)
    plain = load_init_state(save_safetensors(tmp_path / "init.safetensors", init), model)
    for state in (prefixed, plain):
        assert torch.equal(state["1.weight"], init.state_dict()["1.weight"])


def test_prefixed_init_for_a_plain_checkpoint_says_to_resave_it(tmp_path: Path) -> None:
    model = load_model(
        save_safetensors(tmp_path / "m.safetensors", small_mlp()), arch="mlp", arch_kwargs=KW
    )
    with pytest.raises(InvalidInputError, match="re-save it under the checkpoint's names"):
        load_init_state(lightning(tmp_path / "init.ckpt", small_mlp()), model)


def test_mismatch_message_stays_short() -> None:
    expected = {f"layer{i}.weight": torch.zeros(1) for i in range(40)}
    with pytest.raises(InvalidInputError) as caught:
        match_state(expected, {}, source="CHECKPOINT x", fix="Check --arch")
    message = str(caught.value)
    assert "layer5.weight, … (34 more)" in message
    assert len(message) < 300


def test_whole_model_nested_under_a_key_is_its_own_architecture(tmp_path: Path) -> None:
    reference = small_mlp().eval()
    path = tmp_path / "whole.pt"
    torch.save({"model": reference, "epoch": 3}, path)
    with pytest.raises(InvalidInputError, match="--unsafe-allow-pickle"):
        load_model(path)
    model = load_model(path, unsafe_allow_pickle=True)
    x = torch.rand(4, 16)
    assert torch.equal(model.module(x), reference(x))
    assert model.provenance.architecture is None
    assert model.provenance.checkpoint.nested_key == "model"
    # with --arch, its state dict is loaded into the architecture as before
    into_arch = load_model(path, arch="mlp", arch_kwargs=KW, unsafe_allow_pickle=True)
    assert into_arch.provenance.architecture == "mlp"


def test_program_keeps_its_exported_mode(tmp_path: Path) -> None:
    net = small_mlp().eval()
    program = torch.export.export(
        net, (torch.rand(2, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    with pytest.raises(NotImplementedError):  # what torch does, and why pacbound exited 5
        program.module().eval()
    module = program_module(program)
    assert module.eval() is module and module.train() is module
    x = torch.rand(5, 16)
    assert torch.allclose(module(x), net(x))


def test_refused_pickle_names_the_class_it_needs(tmp_path: Path) -> None:
    """A Lightning checkpoint whose hyper_parameters hold an argparse.Namespace."""
    import argparse

    path = tmp_path / "hp.ckpt"
    torch.save(
        {"state_dict": small_mlp().state_dict(), "hyper_parameters": argparse.Namespace()}, path
    )
    with pytest.raises(
        InvalidInputError, match=r"holds Python objects \(e\.g\. argparse\.Namespace\)"
    ):
        read_checkpoint(path)

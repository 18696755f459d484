"""Eval-mode BatchNorm as its per-channel affine map (a, c) (MATH.md §10), the treatment of
each normalization layer, and forwards that change state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.normalization import (
    ChannelAffine,
    affine_state,
    normalization_treatment,
    refuse_state_changes,
    reset_batch_norm_statistics,
    to_channel_affine,
)


def _trained_statistics(model: nn.Module, x: Tensor) -> nn.Module:
    """Running statistics (and γ, β) moved away from a fresh BatchNorm's, as training does."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine:
                mod.weight.uniform_(0.5, 2.0)
                mod.bias.uniform_(-1.0, 1.0)
    return model.eval()


@pytest.mark.parametrize(
    ("bn", "shape"),
    [
        (nn.BatchNorm1d(5), (7, 5)),
        (nn.BatchNorm1d(5), (7, 5, 3)),
        (nn.BatchNorm2d(5), (7, 5, 4, 4)),
        (nn.BatchNorm3d(5, affine=False), (7, 5, 2, 3, 2)),
        (nn.SyncBatchNorm(5), (7, 5, 3)),
    ],
)
def test_channel_affine_computes_the_eval_mode_batch_norm(bn: nn.Module, shape: tuple) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3.0 + 1.0
    model = _trained_statistics(nn.Sequential(bn), x)
    affine = to_channel_affine(model)
    assert isinstance(affine[0], ChannelAffine) and affine is not model
    assert [n for n, _ in affine.named_parameters()] == ["0.scale", "0.shift"]
    assert not list(affine.buffers())  # the running statistics are no buffers any more
    assert torch.allclose(affine(x), model(x), atol=1e-5)
    assert isinstance(model[0], type(bn))  # the checkpoint itself is untouched
    expected = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(affine[0].scale, expected)


def test_a_model_without_batch_norm_is_returned_as_is() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    assert to_channel_affine(model) is model


def test_a_fresh_batch_norm_gives_gamma_over_root_one_plus_eps_and_beta() -> None:
    """The prior mean of an --init file (or a fresh build): a₀ = γ₀/√(1 + ε), c₀ = β₀,
    whatever the checkpoint's statistics are."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, eps=1e-3))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    init["1.weight"] = torch.tensor([1.0, 2.0, 3.0])
    init["1.bias"] = torch.tensor([0.5, -0.5, 0.0])
    _trained_statistics(model, torch.randn(20, 1, 5, 5))
    state = affine_state(model, init)
    assert set(state) == {"0.weight", "0.bias", "1.scale", "1.shift"}
    gamma = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.equal(state["1.scale"], (gamma / math.sqrt(1.0 + 1e-3)).float())
    assert torch.equal(state["1.shift"], init["1.bias"])
    # an init state without statistics: a fresh BatchNorm's (m = 0, v = 1)
    no_stats = {k: v for k, v in init.items() if "running" not in k}
    assert torch.equal(affine_state(model, no_stats)["1.scale"], state["1.scale"])
    with pytest.raises(InvalidInputError, match=r"no 1\.weight / 1\.bias"):
        affine_state(model, {"0.weight": init["0.weight"]})


def test_batch_norm_without_running_statistics_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(InvalidInputError, match=r"BatchNorm 1 \(BatchNorm1d\).*batch mixing"):
        to_channel_affine(model)


def test_reset_statistics_forgets_the_checkpoints() -> None:
    torch.manual_seed(0)
    model = _trained_statistics(nn.Sequential(nn.BatchNorm1d(3)), torch.randn(10, 3) + 4.0)
    init = {"0.running_mean": torch.full((3,), 0.25), "0.running_var": torch.full((3,), 2.0)}
    reset_batch_norm_statistics(model, init)
    assert torch.equal(model[0].running_mean, init["0.running_mean"])
    assert torch.equal(model[0].running_var, init["0.running_var"])
    assert int(model[0].num_batches_tracked) == 0
    _trained_statistics(model, torch.randn(10, 3) + 4.0)
    reset_batch_norm_statistics(model, None)  # no init file: a fresh BatchNorm's
    assert torch.equal(model[0].running_mean, torch.zeros(3))
    assert torch.equal(model[0].running_var, torch.ones(3))


def test_the_treatment_of_each_normalization_layer() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.BatchNorm2d(2),
        nn.GroupNorm(1, 2),
        nn.GroupNorm(1, 2, affine=False),
        nn.Flatten(),
        nn.LayerNorm(8),
    )
    entries = normalization_treatment(model, "prior from the init statistics")
    assert [(e["module"], e["type"]) for e in entries] == [
        ("1", "BatchNorm2d"),
        ("2", "GroupNorm"),
        ("3", "GroupNorm"),
        ("5", "LayerNorm"),
    ]
    assert entries[0]["treatment"] == (
        "per-channel affine a, c covered by the posterior; prior from the init statistics"
    )
    assert entries[1]["treatment"] == "elementwise affine covered by the posterior"
    assert entries[2]["treatment"] == "no parameters"
    assert normalization_treatment(nn.Sequential(nn.Linear(2, 2)), "x") == []


class _TrainsItsNorm(nn.Module):
    """BatchNorm switched to train mode inside forward (statistics updated per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: Tensor) -> Tensor:
        self.bn.train()
        out = self.bn(self.fc(x))
        self.bn.eval()
        return out


class _Cache(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("last", torch.zeros(3))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1  # a counter is harmless
        out = self.fc(x) + self.last
        self.last.copy_(out.detach().mean(0))
        return out


class _FlipsMode(nn.Module):
    """A BatchNorm with momentum 0 put in train mode: batch statistics (examples mix), yet
    its buffers do not change; a dropout flipped is left to the determinism check."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.norm = module

    def forward(self, x: Tensor) -> Tensor:
        self.norm.train()
        return self.norm(self.fc(x))


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (_TrainsItsNorm(), r"bn \(BatchNorm1d: buffer bn\.running_mean\)"),
        (nn.Sequential(nn.Linear(4, 4), _Cache()), r"1 \(_Cache: buffer 1\.last\)"),
        (_FlipsMode(nn.BatchNorm1d(3, momentum=0.0)), r"norm \(BatchNorm1d: set to train mode\)"),
    ],
    ids=["batch-norm-trained-in-forward", "cache", "mode-flip"],
)
def test_a_forward_that_changes_state_is_refused_naming_the_module(
    model: nn.Module, named: str
) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidInputError, match="changes its state in eval mode: " + named):
        refuse_state_changes(model, torch.randn(6, 4))
    for key, value in model.state_dict().items():  # restored
        if value.is_floating_point():
            assert torch.equal(value, before[key]), key
    assert not any(m.training for m in model.modules())


def test_a_stateless_forward_passes() -> None:
    model = _trained_statistics(
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), torch.randn(8, 4)
    )
    refuse_state_changes(model, torch.randn(6, 4))
    refuse_state_changes(_FlipsMode(nn.Dropout(0.5)), torch.randn(6, 4))


def test_a_batch_norm_called_twice_becomes_one_shared_affine() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4)
    model = _trained_statistics(
        nn.Sequential(nn.Linear(4, 4), bn, nn.Linear(4, 4), bn), torch.randn(9, 4)
    )
    affine = to_channel_affine(model)
    assert affine[1] is affine[3] and isinstance(affine[1], ChannelAffine)
    assert [n for n, _ in affine.named_parameters()] == [
        "0.weight", "0.bias", "1.scale", "1.shift", "2.weight", "2.bias"
    ]  # fmt: skip
    x = torch.randn(5, 4)
    assert torch.allclose(affine(x), model(x), atol=1e-5)
    state = affine_state(model, {k: v for k, v in model.state_dict().items()})
    assert {"1.scale", "1.shift"} <= set(state) and "3.scale" not in state


def test_a_buffer_changed_after_the_build_is_refused_naming_its_module() -> None:
    from pacbound.posterior.network import build_stochastic_network

    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, affine=False)).eval()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    net = build_stochastic_network(model, fixed_buffers=fresh)
    with torch.no_grad():
        net.net[1].running_var.mul_(2.0)
    with pytest.raises(InvalidInputError, match=r"buffers \(1\.running_var \(BatchNorm1d\)\)"):
        net.check_buffers_unchanged()

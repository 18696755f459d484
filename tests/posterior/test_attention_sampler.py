"""The exact layer sampler of ``nn.MultiheadAttention`` (issue #13, MATH.md §10): one draw
of all four tensors (``in_proj_*`` and the child ``out_proj``'s) per example, shared by all
its positions; the mean is the module itself; unsupported settings are refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.models.transformer import transformer
from pacbound.posterior.layers import SampleMode
from pacbound.posterior.layers_attention import GaussianMultiheadAttention
from pacbound.posterior.network import (
    Sampler,
    StochasticNetwork,
    auto_sampler,
    build_stochastic_network,
)
from pacbound.posterior.samplers import LAYER_SAMPLERS
from pacbound.posterior.static_checks import layer_sampler_obstacles


class SelfAttention(nn.Module):
    """Self-attention (or cross-attention on a shifted copy) of a (B, L, E) input."""

    def __init__(self, embed: int = 8, heads: int = 2, *, cross: bool = False, **kw: Any) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(embed, heads, batch_first=True, **kw)
        self.cross = cross
        self.need_weights = False
        self.average = True

    def forward(self, x: Tensor) -> Tensor:
        key = x.flip(1) + 1.0 if self.cross else x
        out, weights = self.attention(
            x, key, x, need_weights=self.need_weights, average_attn_weights=self.average
        )
        if not self.need_weights:
            assert weights is None
            return out
        return torch.cat([out, weights.reshape(x.shape[0], x.shape[1], -1)], dim=-1)


def _model(cross: bool = False, seed: int = 0) -> SelfAttention:
    torch.manual_seed(seed)
    model = SelfAttention(cross=cross).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _pair(model: nn.Module) -> tuple[StochasticNetwork, StochasticNetwork]:
    layers = build_stochastic_network(model)
    functional = build_stochastic_network(model, sampler=Sampler.FUNCTIONAL)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for a, b in zip(layers.slots, functional.slots, strict=True):
            assert a.name == b.name
            value = torch.empty_like(a.log_sigma).uniform_(-3.0, -1.0, generator=gen)
            a.log_sigma.copy_(value)
            b.log_sigma.copy_(value)
    return layers, functional


def _draw(net: StochasticNetwork, x: Tensor, seed: int) -> Tensor:
    net.set_mode("per_example", torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return net(x)


def _set(net: nn.Module, need_weights: bool, average: bool) -> None:
    for mod in net.modules():
        if isinstance(mod, SelfAttention):
            mod.need_weights, mod.average = need_weights, average


def test_the_whole_module_is_one_layer_with_four_slots() -> None:
    layers, _ = _pair(_model())
    (layer,) = layers.gaussian_modules()
    assert isinstance(layer, GaussianMultiheadAttention)
    assert [(s.name, s.attr) for s in layers.slots] == [
        ("attention.in_proj_weight", "in_proj_weight"),
        ("attention.in_proj_bias", "in_proj_bias"),
        ("attention.out_proj.weight", "out_proj_weight"),
        ("attention.out_proj.bias", "out_proj_bias"),
    ]
    assert all(s.module is layer for s in layers.slots)
    assert layers.sampler_summary() == {
        "path": "layers",
        "layers": {"GaussianMultiheadAttention": 1},
    }


@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("cross", [False, True])
def test_mean_is_the_module(need_weights: bool, average: bool, cross: bool) -> None:
    model = _model(cross)
    _set(model, need_weights, average)
    layers, _ = _pair(model)
    layers.set_mode("mean")
    x = torch.randn(5, 6, 8)
    with torch.no_grad():
        torch.testing.assert_close(layers(x), model(x), rtol=1e-6, atol=1e-6)
    with torch.enable_grad():  # the module's slow path too (parameters requiring grad)
        torch.testing.assert_close(layers(x), model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("cross", [False, True])
def test_per_example_equals_the_functional_path_under_the_same_noise(
    need_weights: bool, average: bool, cross: bool
) -> None:
    """Noise keyed as the functional path keys it (by owning module, tensor and example):
    each example evaluated alone with its own whole draw gives the same output."""
    model = _model(cross)
    _set(model, need_weights, average)
    layers, functional = _pair(model)
    x = torch.randn(7, 5, 8)
    out = _draw(layers, x, 3)
    torch.testing.assert_close(out, _draw(functional, x, 3), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, _draw(layers, x, 4))  # the noise matters
    layers.check_coverage(x)  # data flow, noise locality, batch independence


def test_chunks_within_the_budget_equal_the_functional_path() -> None:
    """A budget of two examples (smaller than a noise block): the chunked layer draws as
    the functional path does under the same budget; a budget under one example refuses."""
    layers, functional = _pair(_model())
    x = torch.randn(9, 4, 8)
    layer = next(layers.gaussian_modules())
    whole = next(functional.gaussian_modules())
    assert layer.per_example_elements() == whole.per_example_elements()
    budget = 3 * 4 * layer.per_example_elements() * 2  # two examples per chunk
    layer.max_memory = whole.max_memory = budget
    out = _draw(layers, x, 6)
    torch.testing.assert_close(out, _draw(functional, x, 6), rtol=1e-5, atol=1e-5)
    layer.max_memory = 1
    with pytest.raises(InvalidInputError, match="--max-memory"):
        _draw(layers, x, 6)


def test_examples_draw_independently_and_positions_share_a_draw() -> None:
    """One input repeated over the batch: different examples are uncorrelated, each varies;
    the output projection's bias noise is shared by all positions of one example."""
    layers, _ = _pair(_model())
    x = torch.randn(1, 3, 8).expand(4000, 3, 8).contiguous()
    out = _draw(layers, x, 8)
    flat = out.reshape(4000, -1)
    centred = flat - flat.mean(0)
    corr = (centred[0::2] * centred[1::2]).mean(0) / centred.var(0)
    assert corr.abs().max() < 0.12  # 2000 pairs: |corr| ~ N(0, 1/2000)
    assert torch.all(flat.std(0) > 0)
    within = torch.corrcoef(torch.stack([out[:, 0, 0], out[:, 1, 0]]))[0, 1]
    # one draw for all positions: ≈ 0.27 for this model (0.22…0.31 over keys); a draw per
    # position would give ≈ 0 (standard error 1/√4000 ≈ 0.016)
    assert within > 0.15


UNSUPPORTED: dict[str, dict[str, Any]] = {
    "batch_first=False": dict(batch_first=False),
    "kdim/vdim differ": dict(kdim=4, vdim=4),
    "add_bias_kv=True": dict(add_bias_kv=True),
    "add_zero_attn=True": dict(add_zero_attn=True),
    "dropout=0.1": dict(dropout=0.1),
    "bias=False": dict(bias=False),
}


@pytest.mark.parametrize("reason", list(UNSUPPORTED))
def test_unsupported_settings_are_refused(reason: str) -> None:
    kw: dict[str, Any] = {"batch_first": True, **UNSUPPORTED[reason]}
    module = nn.MultiheadAttention(8, 2, **kw)
    refusals = LAYER_SAMPLERS[nn.MultiheadAttention].refusals(module)
    assert any(reason in r for r in refusals), refusals
    model = nn.Sequential(module)
    assert layer_sampler_obstacles(model)
    assert auto_sampler(model) is Sampler.FUNCTIONAL
    with pytest.raises(InvalidInputError):
        build_stochastic_network(model)


def test_supported_module_and_a_hook_on_its_child() -> None:
    entry = LAYER_SAMPLERS[nn.MultiheadAttention]
    module = nn.MultiheadAttention(8, 2, batch_first=True)
    assert entry.refusals(module) == []
    assert layer_sampler_obstacles(nn.Sequential(module)) == []
    module.out_proj.register_forward_hook(lambda *a: None)
    assert entry.refusals(module) == ["out_proj: forward hooks"]


class Masked(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        mask = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
        calls: dict[str, dict[str, Any]] = {
            "key_padding_mask": {"key_padding_mask": mask},
            "attn_mask": {"attn_mask": causal},
            "is_causal": {"attn_mask": causal, "is_causal": True},
        }
        return self.attention(x, x, x, need_weights=False, **calls[self.kind])[0]


@pytest.mark.parametrize("kind", ["key_padding_mask", "attn_mask", "is_causal"])
def test_masks_are_refused_at_call_time(kind: str) -> None:
    net = build_stochastic_network(Masked(kind=kind).eval())
    modes: tuple[SampleMode, ...] = ("mean", "per_example")
    for mode in modes:
        net.set_mode(mode)
        with pytest.raises(InvalidInputError, match="mask"):
            net(torch.randn(2, 3, 8))


def test_reading_the_drawn_tensors_outside_the_layer_is_refused() -> None:
    layers, _ = _pair(_model())
    layer = next(layers.gaussian_modules())
    for name in ("in_proj_weight", "in_proj_bias", "out_proj"):
        with pytest.raises(InvalidInputError, match="outside that module's forward"):
            getattr(layer, name)


def test_the_builtin_transformer_takes_the_layers_path() -> None:
    torch.manual_seed(0)
    model = transformer(d_model=16, heads=2, layers=1, mlp_hidden=16).eval()
    x = torch.randn(6, 1, 28, 28)
    assert layer_sampler_obstacles(model) == []
    assert auto_sampler(model, x) is Sampler.LAYERS
    layers, _ = _pair(model)
    assert layers.sampler_summary()["path"] == "layers"
    layers.set_mode("mean")
    with torch.no_grad():
        torch.testing.assert_close(layers(x), model(x), rtol=1e-6, atol=1e-6)
    # (the whole model's noise order differs from the functional path's: layer by layer)
    assert not torch.allclose(_draw(layers, x, 2), _draw(layers, x, 3))
    layers.check_coverage(x)


def test_prepare_network_takes_the_layers_for_the_transformer() -> None:
    """``--sampler auto`` on the built-in transformer: the layers, and the mean-equals-model
    check, the probes and every other check of ``prepare_network`` pass."""
    from pacbound.certify.gaussian import prepare_network
    from pacbound.certify.gaussian_options import GaussianOptions

    torch.manual_seed(0)
    model = transformer(d_model=16, heads=2, layers=2, mlp_hidden=16).eval()
    x = torch.rand(24, 1, 28, 28)
    net, outputs = prepare_network(
        model,
        x,
        options=GaussianOptions(sampler=None, batch_size=16),
        fixed_buffers={},
        device=torch.device("cpu"),
    )
    assert outputs == 10
    assert net.sampler_summary()["layers"]["GaussianMultiheadAttention"] == 2

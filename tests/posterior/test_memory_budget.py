"""``--max-memory``: per-example weight tensors are drawn in chunks within the budget, the
noise stream does not depend on the budget (so no certificate value moves), and a budget
too small for one example names the smallest one that works. ``--sampler auto``: the layers
when every parameter has an exact layer sampler, else the generic functional path."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import pacbound.posterior.functional as functional_module
import pacbound.posterior.layers as layers_module
import pacbound.posterior.streams as streams_module
from pacbound.certify.gaussian import certify_gaussian
from pacbound.certify.gaussian_options import GaussianOptions, parse_size
from pacbound.errors import InvalidInputError
from pacbound.posterior.functional import FunctionalGaussian
from pacbound.posterior.layers import WEIGHT_COPIES, chunk_plan, default_max_memory
from pacbound.posterior.network import Sampler, auto_sampler, build_stochastic_network
from pacbound.posterior.normalization import ChannelAffine
from pacbound.posterior.priors import PriorMean, ScaleGrid


class _Rows(TorchFunctionMode):
    """Records how many examples each per-example op of a layer receives."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if func is torch.bmm:
            self.rows.append(int(args[0].shape[0]))
        if func is torch.nn.functional.conv1d and args[0].shape[0] == 1:  # grouped: 1 × (B·C)
            self.rows.append(int(args[0].shape[1]) // 2)
        return func(*args, **(kwargs or {}))


@contextmanager
def _vmap_rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    rows: list[int] = []
    real = functional_module.vmap

    def counting(fn: Any) -> Any:
        def run(params: Any, x: Tensor) -> Any:
            rows.append(int(x.shape[0]))
            return real(fn)(params, x)

        return run

    monkeypatch.setattr(functional_module, "vmap", counting)
    yield rows


def _draw(net: Any, x: Tensor, seed: int = 0) -> Tensor:
    net.set_mode("per_example", torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out: Tensor = net(x)
    return out


def test_chunk_plan() -> None:
    # 10 elements of float32 per example: 120 bytes; noise blocks of 64 examples
    assert streams_module.block_rows(10) == streams_module.BLOCK_EXAMPLES == 64
    assert chunk_plan(50, 10, 4, 120 * 7, "l") == 7  # budget below a block: 7 per chunk
    assert chunk_plan(50, 10, 4, 10**9, "l") == 50
    assert chunk_plan(500, 10, 4, 10**9, "l") == 500
    assert chunk_plan(500, 10, 4, 120 * 130, "l") == 128  # whole blocks when one fits
    assert chunk_plan(500, 10, 4, 120 * 63, "l") == 63
    with pytest.raises(InvalidInputError, match=r"smallest budget that works is 120 B \(120 "):
        chunk_plan(50, 10, 4, 119, "l")


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GiB", 2 << 30), ("512 MiB", 512 << 20), ("1e9", 10**9), ("3kb", 3000), ("auto", None)],
)
def test_max_memory_sizes(text: str, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "-1GiB", "lots", "2XB", "1e400", "inf", "nan"])
def test_bad_max_memory_is_refused(text: str) -> None:
    with pytest.raises(InvalidInputError, match="--max-memory"):
        parse_size(text)


def test_default_budget_is_a_quarter_of_memory_and_holds_a_noise_block() -> None:
    assert default_max_memory() >= layers_module.DEFAULT_MAX_MEMORY
    assert layers_module.DEFAULT_MEMORY_FRACTION == 0.25


def _sequence_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))


def test_sequence_linear_chunks_within_a_small_budget_and_keeps_its_draws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Linear(3, 4) on (B, 2, 3): 16 elements per example, 192 bytes with its copies.
    Noise blocks of 4 examples: budgets of 1, 3, 7 and 30 examples give the same draws
    (below one block too), in chunks of at most the budget (whole blocks when one fits)."""
    monkeypatch.setattr(streams_module, "NOISE_BLOCK_ELEMENTS", 16 * 4)  # 4 examples / block
    per_example = WEIGHT_COPIES * 16 * 4
    x = torch.randn(10, 2, 3)
    outs = []
    for examples, chunks in ((1, [1] * 10), (3, [3, 3, 3, 1]), (7, [4, 4, 2]), (30, [10])):
        net = build_stochastic_network(_sequence_model(), max_memory=examples * per_example)
        with _Rows() as rows:
            outs.append(_draw(net, x))
        assert rows.rows == chunks
        assert max(rows.rows) * per_example <= examples * per_example  # within the budget
    for out in outs[1:]:
        torch.testing.assert_close(outs[0], out, rtol=0, atol=0)
    with pytest.raises(
        InvalidInputError, match=rf"smallest budget that works is .*\({per_example} "
    ):
        _draw(build_stochastic_network(_sequence_model(), max_memory=per_example - 1), x)


def test_functional_chunks_within_a_small_budget_and_keeps_its_draws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _sequence_model()
    size = sum(p.numel() for p in model.parameters())  # 16 + 18 = 34
    per_example = WEIGHT_COPIES * size * 4
    monkeypatch.setattr(streams_module, "NOISE_BLOCK_ELEMENTS", size * 4)  # 4 examples / block
    x = torch.randn(11, 2, 3)
    outs = []
    for examples, chunks in ((4, [4, 4, 3]), (9, [8, 3]), (100, [11]), (3, [3, 3, 3, 2])):
        net = build_stochastic_network(
            model, sampler=Sampler.FUNCTIONAL, max_memory=examples * per_example
        )
        with _vmap_rows(monkeypatch) as rows:
            outs.append(_draw(net, x))
        assert rows == chunks
    for out in outs[1:]:
        torch.testing.assert_close(outs[0], out, rtol=0, atol=0)
    # the smallest budget that works is computed for the whole network when it is built
    with pytest.raises(
        InvalidInputError, match=rf"smallest budget that works is .*\({per_example} "
    ):
        build_stochastic_network(model, sampler=Sampler.FUNCTIONAL, max_memory=per_example - 1)
    build_stochastic_network(model, sampler=Sampler.FUNCTIONAL, max_memory=per_example)


def test_conv_draws_the_whole_batch_when_it_fits_else_chunks() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Flatten(), nn.Linear(6, 2))
    per_example = WEIGHT_COPIES * (12 + 2) * 4
    x = torch.randn(9, 2, 5)
    net = build_stochastic_network(model, max_memory=100 * per_example)
    with _Rows() as rows:
        whole = _draw(net, x)
    assert rows.rows == [9]  # one grouped convolution: the draws of before (one block)
    small = build_stochastic_network(model, max_memory=4 * per_example)
    with _Rows() as rows:
        chunked = _draw(small, x)
    assert rows.rows == [4, 4, 1]
    torch.testing.assert_close(chunked, whole)  # the same draws, in chunks
    small.check_coverage(x)  # chunked draws stay per example
    with pytest.raises(InvalidInputError, match=rf"layer '0' needs .*\({per_example} bytes"):
        build_stochastic_network(model, max_memory=per_example - 1)


class _RawScale(nn.Module):
    """A user's module with a bare nn.Parameter used through raw torch ops."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 4))
        self.proj = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(torch.mul(x, self.gain)) + x.pow(2) @ self.gain.unsqueeze(1) / 10
        return self.proj(h)


def test_a_custom_module_with_a_bare_parameter_is_certified_through_the_generic_path() -> None:
    torch.manual_seed(2)
    model = _RawScale()
    assert auto_sampler(model) is Sampler.FUNCTIONAL
    with pytest.raises(InvalidInputError, match=r"<root> \(_RawScale\)"):
        build_stochastic_network(model)  # the layers cannot draw 'gain'
    x = torch.randn(200, 4)
    y = (x[:, 0] > 0).long()
    options = GaussianOptions(
        prior=PriorMean.ZERO,
        prior_scales=ScaleGrid.log_spaced(1e-2, 1.0, 9),
        mc_passes=1,
        search_examples=100,
        sampler=None,  # auto
    )
    cert = certify_gaussian(model, x, y, options=options)
    assert 0.0 < cert.value <= 1.0
    (module,) = list(cert.network.gaussian_modules())
    assert isinstance(module, FunctionalGaussian)
    assert [s.name for s in cert.network.slots] == ["gain", "proj.weight", "proj.bias"]
    net = build_stochastic_network(model, sampler=Sampler.FUNCTIONAL)
    net.set_log_sigma(math.log(0.3))
    twice = _draw(net, x[:1].expand(2, 4))
    assert not torch.equal(twice[0], twice[1])  # the raw op sees each example's own gain
    net.set_mode("mean")
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x))


def test_auto_rule() -> None:
    """Layers only when every parameter-holding module has an applicable sampler and nothing
    is shared; a tie, a reused block or an unsupported module sends the model to functional."""
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # a language model's tied embedding
    ln = nn.LayerNorm(4)
    cases = {
        "layers": nn.Sequential(nn.Conv1d(2, 4, 3), ChannelAffine(4), nn.GroupNorm(2, 4)),
        "tied": nn.Sequential(emb, head),
        "reused": nn.Sequential(nn.Linear(4, 4), ln, nn.ReLU(), ln),
        "unsupported": nn.Sequential(nn.Linear(4, 4), nn.RMSNorm(4)),
        "altered": nn.Sequential(nn.Embedding(5, 4, max_norm=1.0)),
    }
    chosen = {name: auto_sampler(model) for name, model in cases.items()}
    assert chosen == {
        "layers": Sampler.LAYERS,
        "tied": Sampler.FUNCTIONAL,
        "reused": Sampler.FUNCTIONAL,
        "unsupported": Sampler.FUNCTIONAL,
        "altered": Sampler.FUNCTIONAL,
    }


class _RawRead(nn.Module):
    """A registered layer whose weight a raw op also reads (a tied output, hand-written)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) @ self.fc.weight.T


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.fc(x)))  # one layer, two calls: one draw per example


def test_auto_rule_probes_what_only_a_forward_shows() -> None:
    x = torch.randn(16, 4)
    for model in (_RawRead(), _Twice()):
        assert auto_sampler(model) is Sampler.LAYERS  # nothing to see statically
        assert auto_sampler(model, x) is Sampler.FUNCTIONAL
        with pytest.raises(InvalidInputError, match="--sampler functional"):
            build_stochastic_network(model).check_coverage(x)
        net = build_stochastic_network(model, sampler=auto_sampler(model, x))
        net.check_coverage(x)  # the functional path certifies it
    clean = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    assert auto_sampler(clean, x) is Sampler.LAYERS

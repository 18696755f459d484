"""Counter-based draw streams (issue #14): a draw is keyed by (seed, purpose, pass, example,
tensors), so a Monte-Carlo count is the same integer for every batch size, memory budget and
sharding of the examples; the keyed noise is N(0, 1), independent across examples, passes,
purposes, tensors and seeds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor, nn

import pacbound.parallel.world as world_module
import pacbound.posterior.streams as streams
from pacbound.parallel import World
from pacbound.posterior.network import Sampler, StochasticNetwork, build_stochastic_network
from pacbound.posterior.normalization import ChannelAffine
from pacbound.posterior.risk import (
    count_disagreements,
    count_per_batch_errors,
    count_stochastic_errors,
)
from pacbound.posterior.streams import DrawKey, DrawStream

LIKE = torch.zeros(())


def _noise(key: DrawKey, first: int, rows: int, group: str = "g", width: int = 50) -> Tensor:
    return key.example_noise(group, [(width,)], first, rows, LIKE)[0]


def test_keyed_noise_is_standard_normal_and_deterministic() -> None:
    """200 000 draws: mean, variance and kurtosis within 5 standard errors of N(0, 1), and a
    Kolmogorov–Smirnov test does not reject it; the same key gives the same noise."""
    z = _noise(DrawKey(0, "test"), 0, 4000).double().flatten()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / n)
    assert abs(float((z**4).mean()) - 3.0) < 5 * math.sqrt(96 / n)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    assert torch.equal(_noise(DrawKey(0, "test"), 0, 4000).double().flatten(), z)


def test_rows_do_not_depend_on_how_they_are_asked_for() -> None:
    """Any split of the examples into requests (batches, chunks, shards) gives the same rows,
    for a group of two tensors too."""
    key = DrawKey(3, "test", 2)
    shapes = [(3, 4), (3,)]
    whole = key.example_noise("w|b", shapes, 0, 300, LIKE)
    for cuts in ([0, 7, 70, 129, 300], [0, 1, 2, 64, 128, 299, 300], [0, 150, 300]):
        parts = [
            key.example_noise("w|b", shapes, a, b - a, LIKE) for a, b in itertools.pairwise(cuts)
        ]
        for i in range(2):
            assert torch.equal(torch.cat([p[i] for p in parts]), whole[i])
    assert torch.equal(key.at(17).example_noise("w|b", shapes, 5, 3, LIKE)[1], whole[1][5:8])


def _corr(a: Tensor, b: Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def test_draws_are_independent_across_examples_passes_purposes_groups_and_seeds() -> None:
    """Correlations between the noise of one key and of keys that differ in one part are
    within 5 standard errors of 0 (1/√m, m = 64 000 pairs); so are neighbouring examples of
    one block and the two tensors of one group. Seeds equal modulo 2³² differ (the CPU state
    is derived from all the key's bits, not a 32-bit ``manual_seed``)."""
    key, rows = DrawKey(5, "monte_carlo"), 1280
    base = _noise(key, 0, rows)
    others = {
        "examples": _noise(key, rows, rows),
        "pass": _noise(DrawKey(5, "monte_carlo", 1), 0, rows),
        "purpose": _noise(DrawKey(5, "search"), 0, rows),
        "group": _noise(key, 0, rows, group="h"),
        "seed": _noise(DrawKey(6, "monte_carlo"), 0, rows),
        "seed + 2^32": _noise(DrawKey(5 + (1 << 32), "monte_carlo"), 0, rows),
        "next example": torch.roll(base, 1, dims=0),
    }
    bound = 5 / math.sqrt(base.numel())
    for name, other in others.items():
        assert abs(_corr(base, other)) < bound, name
    w, b = key.example_noise("w|b", [(50,), (50,)], 0, rows, LIKE)
    assert abs(_corr(w, b)) < bound


def test_numpy_fallback_when_the_cpu_state_layout_is_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert streams._CPU_TEMPLATE is not None  # this torch's layout: the Mersenne Twister
    monkeypatch.setattr(streams, "_CPU_TEMPLATE", None)
    z = _noise(DrawKey(1, "test"), 0, 2000).double().flatten()
    assert torch.equal(_noise(DrawKey(1, "test"), 0, 2000).double().flatten(), z)
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / z.numel())
    assert torch.equal(
        _noise(DrawKey(1, "test"), 100, 50), _noise(DrawKey(1, "test"), 0, 150)[100:]
    )


def test_a_stream_advances_by_passes_and_a_generator_seeds_one() -> None:
    stream = DrawStream(7, "search")
    assert [stream.next_pass() for _ in range(3)] == [DrawKey(7, "search", k) for k in range(3)]
    a = DrawStream.from_generator(torch.Generator().manual_seed(1), "x")
    b = DrawStream.from_generator(torch.Generator().manual_seed(1), "x")
    assert a.seed == b.seed and a.seed != DrawStream.from_generator(torch.Generator(), "x").seed
    with pytest.raises(TypeError, match="ints and strings"):
        DrawKey(1, "test").batch_noise(0, 1.5, (2,), LIKE)  # type: ignore[arg-type]


class Tokens(nn.Module):
    """Token and positional embeddings, LayerNorm, self-attention, a per-position MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Embedding(11, 8)
        self.position = nn.Embedding(5, 8)
        self.norm = nn.LayerNorm(8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        h = self.norm(self.token(x) + self.position(positions))
        h = h + self.attention(h, h, h, need_weights=False)[0]
        return self.head(torch.relu(self.mlp(h)).mean(1))


def _conv_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        ChannelAffine(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.GroupNorm(2, 4),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def _case(kind: str) -> tuple[nn.Module, Tensor, Sampler]:
    torch.manual_seed(0)
    n = 300  # not a whole number of noise blocks
    if kind == "tokens":
        return Tokens().eval(), torch.randint(0, 11, (n, 5)), Sampler.LAYERS
    x = torch.randn(n, 1, 6, 6)
    return _conv_model().eval(), x, Sampler.FUNCTIONAL if kind == "functional" else Sampler.LAYERS


def _network(
    model: nn.Module, sampler: Sampler, max_memory: int | None = None
) -> StochasticNetwork:
    net = build_stochastic_network(model, sampler=sampler, max_memory=max_memory)
    net.set_log_sigma(math.log(0.3))
    return net


KINDS = ["conv", "functional", "tokens"]


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_do_not_depend_on_the_batching_or_the_budget(kind: str) -> None:
    """Every sampler (conv, ChannelAffine, GroupNorm, Linear; embeddings, LayerNorm,
    attention, Linear on sequences; the functional path): example i's output is the same in
    any batch and any chunking, given the pass key and i's place in the data set."""
    model, x, sampler = _case(kind)
    x = x[:150]
    key = DrawKey(1, "test")
    net = _network(model, sampler)
    with torch.no_grad():
        net.set_mode("per_example", key)
        whole = net(x)
        small = _network(model, sampler, max_memory=3 * 4 * 2 * _elements(net))
        for size, network in ((1, net), (7, net), (64, small), (150, small)):
            parts = []
            for start in range(0, 150, size):
                network.set_mode("per_example", key.at(start))
                parts.append(network(x[start : start + size]))
            torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-6)
        net.set_mode("per_example", key)  # the data shifted by one example: other draws
        assert not torch.allclose(net(x[1:]), whole[1:], rtol=1e-3, atol=1e-4)


def _elements(net: StochasticNetwork) -> int:
    return max(max(m.per_example_elements() for m in net.gaussian_modules()), 1)


def _count(net: StochasticNetwork, x: Tensor, y: Tensor, batch_size: int) -> tuple[int, int]:
    count = count_stochastic_errors(
        net, x, y, passes=2, stream=DrawStream(9, "monte_carlo"), batch_size=batch_size
    )
    return count.errors, count.evaluations


def _sharded(monkeypatch: pytest.MonkeyPatch, world_size: int, count) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    """The counts of ranks 0 … world_size − 1 (each on its shard), summed by hand: a
    one-process stand-in for the all-reduce of a real process group."""
    totals: tuple[int, ...] | None = None
    for rank in range(world_size):
        monkeypatch.setattr(world_module, "_CURRENT", World(rank=rank, world_size=world_size))
        part = count()
        totals = part if totals is None else tuple(a + b for a, b in zip(totals, part, strict=True))
    monkeypatch.setattr(world_module, "_CURRENT", World())
    assert totals is not None
    return totals


@pytest.mark.parametrize("kind", KINDS)
def test_monte_carlo_count_is_the_same_for_any_batch_size_budget_and_shards(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, sampler = _case(kind)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    net = _network(model, sampler)
    reference = _count(net, x, y, 64)
    assert reference[1] == 2 * 300 and 0 < reference[0] < 600
    for batch_size in (1, 7, 1000):
        assert _count(net, x, y, batch_size) == reference, batch_size
    small = _network(model, sampler, max_memory=3 * 4 * 3 * _elements(net))
    assert _count(small, x, y, 100) == reference
    for world_size in (1, 2, 3):
        assert _sharded(monkeypatch, world_size, lambda: _count(net, x, y, 50)) == reference
    assert _count(net, x, y, 64) == reference  # the world is one process again


def test_disagreements_and_per_batch_draws_are_the_same_for_any_shards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, x, sampler = _case("conv")
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    net = _network(model, sampler)
    net.set_log_sigma(math.log(0.6))

    def disagreements(batch_size: int = 64) -> tuple[int, int]:
        c = count_disagreements(
            net, model, x, passes=1, stream=DrawStream(2, "disagreement"), batch_size=batch_size
        )
        return c.errors, c.evaluations

    def per_batch() -> tuple[int, int]:
        c = count_per_batch_errors(
            net, x, y, passes=2, stream=DrawStream(2, "monte_carlo"), batch=30
        )
        return c.errors, c.evaluations

    dis, pb = disagreements(), per_batch()
    assert 0 < dis[0] < 300 and pb[1] == 600
    assert disagreements(7) == dis
    for world_size in (2, 3):
        assert _sharded(monkeypatch, world_size, disagreements) == dis
        assert _sharded(monkeypatch, world_size, per_batch) == pb

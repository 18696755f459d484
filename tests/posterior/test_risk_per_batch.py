"""Per-batch Monte-Carlo draws (MATH.md §10): one θ ~ Q per batch of B examples, counted as
K·n/B batch means; and the memory estimate that makes ``--mc-draws auto`` choose them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pacbound.bounds import mc_upper_per_batch, mc_upper_per_example
from pacbound.errors import InvalidInputError
from pacbound.models import BUILTINS
from pacbound.posterior import layers
from pacbound.posterior.network import Sampler, auto_sampler, build_stochastic_network
from pacbound.posterior.normalization import to_channel_affine
from pacbound.posterior.risk import (
    count_per_batch_errors,
    one_draw,
    per_example_bytes,
    per_example_fits,
)
from pacbound.posterior.streams import DrawKey, DrawStream


class Tied(nn.Module):
    """A weight used twice (a tie): one coordinate of θ, drawn once per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _manual_errors(model, network, x, y, *, passes, batch, seed):
    """The same draws made by hand: ε of every slot keyed by (seed, pass, batch index, slot
    name), θ = μ + σ ε put into a deterministic copy, evaluated on the batch."""
    errors = 0
    for k in range(passes):
        key = DrawKey(seed, "test", k)
        for start in range(0, x.shape[0], batch):
            theta = {
                slot.name: slot.mu.detach()
                + torch.exp(slot.log_sigma.detach())
                * key.batch_noise(start // batch, slot.name, slot.mu.shape, slot.mu)
                for slot in network.slots
            }
            logits = torch.func.functional_call(model, theta, (x[start : start + batch],))
            errors += int((logits.argmax(1) != y[start : start + batch]).sum())
    return errors


@pytest.mark.parametrize("sampler", [Sampler.LAYERS, Sampler.FUNCTIONAL])
def test_one_draw_per_batch_shared_by_its_examples_and_means_restored(sampler: Sampler) -> None:
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        if sampler is Sampler.LAYERS
        else Tied()
    )
    if isinstance(model, Tied):
        x = torch.randn(24, 3)
    else:
        x = torch.randn(24, 4)
    y = torch.randint(0, 3, (24,))
    network = build_stochastic_network(model, sampler=sampler)
    network.set_log_sigma(math.log(0.5))
    before = [slot.mu.detach().clone() for slot in network.slots]
    count = count_per_batch_errors(network, x, y, passes=3, stream=DrawStream(11, "test"), batch=8)
    assert count.evaluations == 3 * 24
    assert count.errors == _manual_errors(model, network, x, y, passes=3, batch=8, seed=11)
    for slot, mu in zip(network.slots, before, strict=True):
        assert torch.equal(slot.mu, mu)  # μ restored bit for bit


def test_means_are_restored_when_the_forward_fails() -> None:
    network = build_stochastic_network(nn.Sequential(nn.Linear(4, 2)))
    before = network.slots[0].mu.detach().clone()
    x = torch.full((4, 4), math.nan)
    with pytest.raises(Exception, match="NaN"):
        count_per_batch_errors(
            network,
            x,
            torch.zeros(4, dtype=torch.long),
            passes=1,
            stream=DrawStream(0, "test"),
            batch=2,
        )
    assert torch.equal(network.slots[0].mu, before)


def test_refuses_a_batch_that_does_not_divide_n() -> None:
    network = build_stochastic_network(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(InvalidInputError, match="dividing n = 10, not 4"):
        count_per_batch_errors(
            network,
            torch.randn(10, 4),
            torch.zeros(10, dtype=torch.long),
            passes=1,
            stream=DrawStream(0, "test"),
            batch=4,
        )


def test_per_batch_bound_covers_a_known_risk_over_seeds() -> None:
    # logits (w0·x, w1·x) with x > 0 and label 0: every example errs iff w1 > w0, so the
    # errors of one draw are perfectly correlated over the batch and
    # L̂(Q) = P(w1 > w0) = Φ((μ1 − μ0)/(σ√2)). Honest m = K·n/B covers it in ≥ 1 − δ′ of
    # the runs; the per-example count K·n (wrong here) does not.
    model = nn.Sequential(nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0], [-0.3]]))
    network = build_stochastic_network(model)
    sigma = 0.5
    network.set_log_sigma(math.log(sigma))
    true_risk = 0.5 * math.erfc(0.3 / (sigma * math.sqrt(2.0)) / math.sqrt(2.0))
    n, batch, passes, delta, trials = 64, 32, 4, 0.2, 250
    x, y = torch.rand(n, 1) + 0.1, torch.zeros(n, dtype=torch.long)
    honest, miscounted = [], []
    for seed in range(trials):
        count = count_per_batch_errors(
            network,
            x,
            y,
            passes=passes,
            stream=DrawStream(seed, "test"),
            batch=batch,
        )
        mc = mc_upper_per_batch(count.rate, n=n, passes=passes, batch=batch, delta=delta)
        assert mc.n == passes * n // batch == 8
        honest.append(mc.value < true_risk)
        wrong = mc_upper_per_example(count.rate, n=n, passes=passes, delta=delta)
        miscounted.append(wrong.value < true_risk)
    # Chernoff is tight for a Bernoulli near 0 errors: δ′ plus 3σ of binomial noise
    assert np.mean(honest) <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    assert np.mean(miscounted) > 2 * delta


def test_memory_estimate_counts_what_per_example_draws_materialize() -> None:
    mlp = build_stochastic_network(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    assert per_example_bytes(mlp, 1024) == 0  # local reparameterization: no weight copies
    conv = build_stochastic_network(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    )
    copies = int(getattr(layers, "WEIGHT_COPIES", 1))
    kernel = copies * (2 * 1 * 3 * 3 + 2) * 4  # weight and bias of the conv, float32
    assert per_example_bytes(conv, 10) == 10 * kernel
    functional = build_stochastic_network(Tied(), sampler=Sampler.FUNCTIONAL)
    assert per_example_bytes(functional, 5) == 5 * copies * (9 + 3 + 3) * 4  # a tie once
    assert per_example_fits(conv, 10, None)
    assert per_example_fits(conv, 10, 10 * kernel)
    assert not per_example_fits(conv, 10, 10 * kernel - 1)


@pytest.mark.parametrize("name", ["resnet", "transformer"])
def test_one_draw_is_the_hand_drawn_theta_on_the_builtin_resnet_and_transformer(name: str) -> None:
    # The BN ResNet (layers path, BatchNorm as ChannelAffine) and the transformer
    # (layers path: MultiheadAttention, LayerNorm, positional Embedding): the network
    # inside one_draw computes exactly the model at θ = μ + σ ⊙ ε, ε keyed by slot name.
    torch.manual_seed(0)
    model = to_channel_affine(BUILTINS[name].factory().eval())
    network = build_stochastic_network(model, sampler=auto_sampler(model))
    network.set_log_sigma(math.log(0.3))
    network.set_mode("mean")
    x = torch.randn(3, 1, 28, 28)
    key = DrawKey(5, "test", 2)
    before = [s.mu.detach().clone() for s in network.slots]
    with torch.no_grad():
        theta = {
            s.name: s.mu + torch.exp(s.log_sigma) * key.batch_noise(3, s.name, s.mu.shape, s.mu)
            for s in network.slots
        }
        expected = torch.func.functional_call(model, theta, (x,))
        with one_draw(network, key, 3):
            drawn = network(x)
        mean = network(x)
    assert torch.equal(drawn, expected)
    assert not torch.allclose(drawn, mean)  # a real draw
    assert all(torch.equal(s.mu, b) for s, b in zip(network.slots, before, strict=True))

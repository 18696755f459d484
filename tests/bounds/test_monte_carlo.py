"""Monte-Carlo Chernoff bounds on L̂(Q): the draw count is what was actually drawn (MATH.md §3)."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from pacbound.bounds import (
    kl_inv_upper,
    mc_risk_upper_bound,
    mc_upper_per_batch,
    mc_upper_per_example,
    mc_upper_whole_network,
    per_batch_size,
)
from pacbound.errors import InvalidInputError
from tests.bounds.test_kl import ref_kl_inv_upper


def test_zero_mean_closed_form() -> None:
    # kl⁻¹(0, ln(1/δ′)/m) = 1 − δ′^(1/m); docstring value 0.004594583 for m = 1000, δ′ = 0.01
    result = mc_risk_upper_bound(0.0, draws=1000, delta=0.01)
    assert result.value == pytest.approx(-math.expm1(math.log(0.01) / 1000), rel=1e-12)
    assert round(result.value, 9) == 0.004594583


@pytest.mark.parametrize(("mean", "draws", "delta"), [(0.03, 1000, 0.01), (0.2, 150_000, 1e-3)])
def test_chernoff_value_against_decimal_reference(mean: float, draws: int, delta: float) -> None:
    result = mc_risk_upper_bound(mean, draws=draws, delta=delta)
    exact = ref_kl_inv_upper(mean, math.log(1 / delta) / draws)
    assert Decimal(result.value) >= exact
    assert result.value == pytest.approx(float(exact), rel=1e-9)
    assert result.method == "monte-carlo-chernoff"
    assert result.n == draws
    assert result.terms["draws"] == draws


def test_whole_network_counts_networks_not_network_times_examples() -> None:
    # m = 1000 networks, each on n = 60000 examples: the Chernoff count is 1000.
    whole = mc_upper_whole_network(0.03, m=1000, delta=0.01)
    assert whole.n == 1000
    assert whole.value == mc_risk_upper_bound(0.03, draws=1000, delta=0.01).value
    assert whole.value == kl_inv_upper(0.03, whole.terms["rhs"])
    assert whole.terms["rhs"] == pytest.approx(math.log(100) / 1000, rel=1e-15)


def test_per_example_counts_n_times_passes() -> None:
    # MATH.md §3: K = 5 passes at n = 60000 give nK = 300000 independent draws.
    per_example = mc_upper_per_example(0.03, n=60000, passes=5, delta=0.01)
    assert per_example.n == 300_000
    assert per_example.value == mc_risk_upper_bound(0.03, draws=300_000, delta=0.01).value
    whole = mc_upper_whole_network(0.03, m=1000, delta=0.01)
    # 300000 draws are much tighter than 1000 for the same mean and δ′
    assert 0.03 < per_example.value < whole.value
    assert per_example.value - 0.03 < 0.1 * (whole.value - 0.03)


def test_chernoff_bound_is_sound_for_non_identical_means() -> None:
    # Soundness by simulation (MATH.md §3, §9): averages of independent Bernoulli(p_i) with
    # unequal p_i; the bound must fall below the true mean in at most ≈ δ′ of the trials.
    rng = np.random.default_rng(12345)
    m, trials, delta = 200, 4000, 0.1
    p = rng.beta(0.5, 5.0, size=m)  # skewed per-example error probabilities
    true_mean = float(p.mean())
    draws = rng.random((trials, m)) < p  # one independent draw per example per trial
    means = draws.mean(axis=1)
    failures = sum(
        mc_risk_upper_bound(float(e), draws=m, delta=delta).value < true_mean for e in means
    )
    rate = failures / trials
    # Chernoff is conservative: the rate is well under δ′; 3σ of binomial noise on top
    assert rate <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    # and the bound is not vacuous: with a δ′ of 0.9, it does fail sometimes
    loose = sum(mc_risk_upper_bound(float(e), draws=m, delta=0.9).value < true_mean for e in means)
    assert loose > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mean_loss": 1.5, "draws": 10, "delta": 0.1}, r"mean_loss must be in \[0, 1\]"),
        ({"mean_loss": math.nan, "draws": 10, "delta": 0.1}, "mean_loss must be finite"),
        ({"mean_loss": 0.1, "draws": 0, "delta": 0.1}, "draws must be at least 1"),
        ({"mean_loss": 0.1, "draws": 2.5, "delta": 0.1}, "draws must be an integer"),
        ({"mean_loss": 0.1, "draws": 10, "delta": 0.0}, r"delta must be in \(0, 1\)"),
        ({"mean_loss": 0.1, "draws": 10, "delta": 1.0}, r"delta must be in \(0, 1\)"),
    ],
)
def test_mc_rejects_bad_inputs(kwargs: dict, match: str) -> None:
    mean = kwargs.pop("mean_loss")
    with pytest.raises(InvalidInputError, match=match):
        mc_risk_upper_bound(mean, **kwargs)


def test_per_example_rejects_bad_counts() -> None:
    with pytest.raises(InvalidInputError, match="passes must be at least 1, got 0"):
        mc_upper_per_example(0.1, n=100, passes=0, delta=0.1)
    with pytest.raises(InvalidInputError, match="n must be an integer"):
        mc_upper_per_example(0.1, n=10.5, passes=2, delta=0.1)
    with pytest.raises(InvalidInputError, match="draws must be at least 1"):
        mc_upper_whole_network(0.1, m=0, delta=0.1)


def test_per_batch_counts_batches() -> None:
    # MATH.md §10: K = 5 passes over n = 60000 in batches of B = 1000 are 300 draws, not 300000
    per_batch = mc_upper_per_batch(0.03, n=60000, passes=5, batch=1000, delta=0.01)
    assert per_batch.n == 300
    assert per_batch.terms["batch"] == 1000
    assert per_batch.value == mc_risk_upper_bound(0.03, draws=300, delta=0.01).value
    assert per_batch.value > mc_upper_per_example(0.03, n=60000, passes=5, delta=0.01).value
    # B = 1 is per-example draws, to the bit
    one = mc_upper_per_batch(0.03, n=60000, passes=5, batch=1, delta=0.01)
    assert one.value == mc_upper_per_example(0.03, n=60000, passes=5, delta=0.01).value


@pytest.mark.parametrize(
    ("n", "batch", "expected"),
    [
        (60000, 1024, 1000),
        (60000, 60000, 60000),
        (100, 1024, 100),
        (97, 64, 1),
        (30000, 1024, 1000),
    ],
)
def test_per_batch_size_is_the_largest_divisor_not_above_the_batch(
    n: int, batch: int, expected: int
) -> None:
    assert per_batch_size(n, batch) == expected
    assert n % expected == 0
    assert all(n % b for b in range(expected + 1, min(n, batch) + 1))


def test_per_batch_refuses_a_batch_that_does_not_divide_n() -> None:
    with pytest.raises(
        InvalidInputError, match=r"B = 1024 does not divide n = 60000 \(use B = 1000"
    ):
        mc_upper_per_batch(0.1, n=60000, passes=1, batch=1024, delta=0.1)
    with pytest.raises(InvalidInputError, match="batch must be at least 1"):
        mc_upper_per_batch(0.1, n=100, passes=1, batch=0, delta=0.1)


def test_per_batch_bound_covers_correlated_batches_and_the_miscount_does_not() -> None:
    # One θ per batch: with probability q it is a "bad" draw that errs on the whole batch,
    # otherwise it errs on example i with probability p_i. L̂(Q) = q + (1 − q)·mean(p).
    # Within a batch the errors are strongly dependent, so counting n·K examples as draws
    # is wrong; counting the K·n/B batch means is sound (MATH.md §10).
    rng = np.random.default_rng(7)
    n, batch, passes, delta, trials, q = 400, 20, 2, 0.1, 2000, 0.05
    p = rng.beta(0.5, 8.0, size=n)
    true_risk = q + (1 - q) * float(p.mean())
    batches = passes * n // batch
    bad = rng.random((trials, batches, 1)) < q
    own = rng.random((trials, batches, batch)) < np.tile(p.reshape(-1, batch), (passes, 1))
    means = (bad | own).mean(axis=(1, 2))
    values = np.unique(means)  # the bound is a function of the mean: one call per value
    honest = {
        e: mc_upper_per_batch(float(e), n=n, passes=passes, batch=batch, delta=delta).value
        for e in values
    }
    miscounted = {
        e: mc_upper_per_example(float(e), n=n, passes=passes, delta=delta).value for e in values
    }
    fail_honest = float(np.mean([honest[e] < true_risk for e in means]))
    fail_miscounted = float(np.mean([miscounted[e] < true_risk for e in means]))
    assert fail_honest <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    assert fail_miscounted > 2 * delta  # the n·K count is not a bound here
    # and the honest bound is not vacuous: at δ′ = 0.9 it does fail sometimes
    loose = {
        e: mc_upper_per_batch(float(e), n=n, passes=passes, batch=batch, delta=0.9).value
        for e in values
    }
    assert np.mean([loose[e] < true_risk for e in means]) > 0.05

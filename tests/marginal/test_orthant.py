"""ln P(g > 0): closed forms (n = 1, 2, 3), brute-force Monte Carlo (n ≤ 8), unbiasedness of
the GHK estimate, coverage of the certified lower bound, EP's accuracy, and failure modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import truncnorm

from pacbound.errors import InvalidInputError, NumericalError
from pacbound.harness.coverage import binomial_p_value
from pacbound.marginal import (
    certified_log_orthant,
    constraint_covariance,
    ep_orthant,
    orthant_draws,
)
from pacbound.marginal import ghk as ghk_module
from pacbound.marginal.ghk import _draw_row

ALPHA = 0.001  # the harness's significance level


def corr(r12: float, r13: float = 0.0, r23: float = 0.0, n: int = 2) -> np.ndarray:
    c = np.array([[1.0, r12, r13], [r12, 1.0, r23], [r13, r23, 1.0]])
    return c[:n, :n]


def exact_log_p(c: np.ndarray) -> float:
    """Orthant probabilities in closed form (Sheppard 1899; n = 3: Plackett 1954)."""
    if c.shape[0] == 1:
        return math.log(0.5)
    d = np.sqrt(np.diag(c))
    r = c / np.outer(d, d)
    if c.shape[0] == 2:
        return math.log(0.25 + math.asin(r[0, 1]) / (2 * math.pi))
    s = math.asin(r[0, 1]) + math.asin(r[0, 2]) + math.asin(r[1, 2])
    return math.log(0.125 + s / (4 * math.pi))


CASES = [
    np.array([[3.0]]),
    corr(0.6),
    corr(-0.9),
    2.0 * corr(0.3, -0.5, 0.2, n=3),
    corr(-0.45, -0.45, -0.45, n=3),  # P = 1/8 − 3 arcsin(0.45)/(4π) ≈ 0.0087
]


@pytest.mark.parametrize("c", CASES)
def test_ep_close_to_closed_form(c: np.ndarray) -> None:
    ep = ep_orthant(c)
    assert ep.converged
    assert ep.log_z == pytest.approx(exact_log_p(c), abs=0.15 if c.shape[0] == 3 else 0.06)


def test_ep_exact_for_one_and_independent_sites() -> None:
    assert ep_orthant(np.array([[3.0]])).log_z == pytest.approx(math.log(0.5), abs=1e-12)
    assert ep_orthant(np.diag([1.0, 2.0, 5.0])).log_z == pytest.approx(3 * math.log(0.5), abs=1e-9)


@pytest.mark.parametrize("c", CASES)
@pytest.mark.parametrize("guided", [True, False])
def test_ghk_is_unbiased(c: np.ndarray, guided: bool) -> None:
    # Mean of Ẑ over 200 seeds matches P(U) within 4 standard errors of that mean.
    ep = ep_orthant(c) if guided else None
    z = np.array(
        [
            math.exp(certified_log_orthant(c, samples=20, seed=s, delta=0.5, ep=ep).log_estimate)
            for s in range(200)
        ]
    )
    p = math.exp(exact_log_p(c))
    se = z.std(ddof=1) / math.sqrt(z.size)
    assert abs(z.mean() - p) <= 4 * se + 1e-12 * p


def test_certified_lower_bound_coverage_and_power() -> None:
    # 200 seeds: violations (lower > exact ln P) follow at most Bin(200, δ_IS). The same test
    # rejects the estimate itself used as a "bound" (no Markov correction): it has power.
    c = corr(-0.45, -0.45, -0.45, n=3)
    exact, delta = exact_log_p(c), 0.05
    runs = [certified_log_orthant(c, samples=4, seed=s, delta=delta) for s in range(200)]
    violations = sum(r.log_lower > exact for r in runs)
    assert binomial_p_value(violations, 200, delta) >= ALPHA
    naive = sum(r.log_estimate > exact for r in runs)
    assert binomial_p_value(naive, 200, delta) < ALPHA


def test_against_brute_force_monte_carlo() -> None:
    # n = 7 random correlated covariance: 10⁶ direct draws of g ~ N(0, Σ).
    rng = np.random.default_rng(7)
    a = rng.standard_normal((7, 9))
    c = a @ a.T / 9 + 0.2 * np.eye(7)
    g = rng.standard_normal((1_000_000, 7)) @ np.linalg.cholesky(c).T
    hits = np.all(g > 0, axis=1)
    p_mc, se_mc = hits.mean(), hits.std() / 1000.0
    ep = ep_orthant(c)
    est = certified_log_orthant(c, samples=20_000, seed=3, delta=0.01, ep=ep)
    assert math.exp(est.log_estimate) == pytest.approx(p_mc, abs=4 * se_mc + 0.02 * p_mc)
    lows = [certified_log_orthant(c, samples=8, seed=s, delta=0.05, ep=ep) for s in range(200)]
    upper_truth = math.log(p_mc + 4 * se_mc)
    violations = sum(r.log_lower > upper_truth for r in lows)
    assert binomial_p_value(violations, 200, 0.05) >= ALPHA
    assert abs(ep.log_z - math.log(p_mc)) < 0.2


def test_reproducible_and_independent_of_block_size() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 60))
    c = a @ a.T / 60 + 0.1 * np.eye(40)
    ep = ep_orthant(c)
    r1 = certified_log_orthant(c, samples=50, seed=11, delta=0.01, ep=ep, block=7)
    r2 = certified_log_orthant(c, samples=50, seed=11, delta=0.01, ep=ep, block=256)
    r3 = certified_log_orthant(c, samples=50, seed=12, delta=0.01, ep=ep)
    assert r1.log_estimate == pytest.approx(r2.log_estimate, rel=1e-12)
    assert r1.log_estimate != r3.log_estimate
    assert r1.log_lower == pytest.approx(r1.log_estimate - math.log(100.0), abs=1e-9)
    assert r1.method == "ghk-ep-cavity" and r1.to_dict()["samples"] == 50


def test_guided_proposal_reduces_weight_spread() -> None:
    n = 120  # AR(1) with negative correlation: ln P(U) far below n ln(1/2)
    idx = np.arange(n)
    c = (-0.7) ** np.abs(idx[:, None] - idx[None, :])
    ep = ep_orthant(c)
    guided = certified_log_orthant(c, samples=100, seed=0, delta=0.01, ep=ep)
    plain = certified_log_orthant(c, samples=100, seed=0, delta=0.01)
    assert guided.log_weight_std < 0.5 * plain.log_weight_std
    assert math.isfinite(plain.log_lower) and math.isfinite(guided.log_lower)
    assert abs(guided.log_estimate - ep.log_z) < 0.02 * abs(ep.log_z)


@pytest.mark.parametrize("t", [-60.0, -3.0, 0.0, 2.0, 8.0, 40.0, 1e3, 1e6])
def test_truncated_sampler_in_extreme_tails(t: float) -> None:
    # Plain GHK row with b chosen so the threshold is t: samples ≥ t, finite weights, and the
    # sample mean is the truncated normal's mean (scipy.stats.truncnorm).
    chol = np.eye(1)
    v = 1.0 - np.random.default_rng(1).random(4000)
    z, term, _ = _draw_row(0, np.full(4000, -t), None, chol, None, v)
    assert np.all(np.isfinite(z)) and np.all(np.isfinite(term)) and np.all(z >= t)
    mean, sd = truncnorm.stats(t, np.inf, moments="mv") if t < 30 else (t + 1 / t, 1 / t)
    assert z.mean() == pytest.approx(float(mean), abs=5 * math.sqrt(float(sd)) / 60 + 1e-9 * t)


def test_very_small_probability_is_finite() -> None:
    n = 1100  # independent: P = 2^-n exactly, far below the smallest float64
    r = certified_log_orthant(np.eye(n), samples=10, seed=0, delta=0.01)
    assert r.log_estimate == pytest.approx(n * math.log(0.5), rel=1e-12)


def test_multiclass_covariance_matches_direct_sampling() -> None:
    k = np.array([[1.0, 0.4], [0.4, 1.5]])
    y = np.array([2, 0])
    cov = constraint_covariance(k, y, 3)  # rows (0, c=0), (0, c=1), (1, c=1), (1, c=2)
    rng = np.random.default_rng(5)
    f = rng.standard_normal((400_000, 3, 2)) @ np.linalg.cholesky(k).T  # f[m, class, i]
    g = np.stack(
        [
            f[:, 2, 0] - f[:, 0, 0],
            f[:, 2, 0] - f[:, 1, 0],
            f[:, 0, 1] - f[:, 1, 1],
            f[:, 0, 1] - f[:, 2, 1],
        ],
        axis=1,
    )
    emp = g.T @ g / g.shape[0]
    se = np.sqrt((g[:, :, None] ** 2 * g[:, None, :] ** 2).mean(0) / g.shape[0])
    assert np.all(np.abs(emp - cov) < 5 * se)
    p_direct = np.mean(np.all(g > 0, axis=1))
    est = certified_log_orthant(cov, samples=20_000, seed=1, delta=0.01, ep=ep_orthant(cov))
    assert math.exp(est.log_estimate) == pytest.approx(p_direct, rel=0.03)
    one = constraint_covariance(np.array([[2.0]]), np.array([1]), 3)  # P(argmax = y) = 1/3
    assert math.exp(
        certified_log_orthant(one, samples=4000, seed=0, delta=0.5).log_estimate
    ) == pytest.approx(1 / 3, rel=0.02)


def test_binary_covariance_flips_signs() -> None:
    k = np.array([[2.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 1.0]])
    s = np.array([1.0, -1.0, -1.0])
    assert np.allclose(constraint_covariance(k, np.array([1, 0, 0]), 2), k * np.outer(s, s))


def test_failure_modes() -> None:
    singular = np.array([[1.0, 1.0], [1.0, 1.0]]) - 1e-3 * np.eye(2)
    with pytest.raises(NumericalError, match="not positive definite after the jitter 1e-06"):
        certified_log_orthant(singular, samples=5, seed=0, delta=0.1, jitter=1e-6)
    with pytest.raises(NumericalError, match="did not converge"):
        ep_orthant(corr(0.5), max_iter=1)
    with pytest.raises(InvalidInputError, match="delta_is"):
        certified_log_orthant(np.eye(2), samples=5, seed=0, delta=1.5)
    with pytest.raises(InvalidInputError, match="labels"):
        constraint_covariance(np.eye(2), np.array([0, 2]), 2)
    with pytest.raises(InvalidInputError, match="sites"):
        certified_log_orthant(np.eye(3), samples=5, seed=0, delta=0.1, ep=ep_orthant(np.eye(2)))
    with pytest.raises(NumericalError, match="NaN"):
        certified_log_orthant(np.full((2, 2), np.nan), samples=5, seed=0, delta=0.1)


def test_zero_estimate_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def underflow(*args: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = np.asarray(args[1])
        return np.zeros_like(b), np.full_like(b, -np.inf), np.zeros_like(b)

    monkeypatch.setattr(ghk_module, "_draw_row", underflow)
    with pytest.raises(NumericalError, match="zero"):
        certified_log_orthant(np.eye(2), samples=5, seed=0, delta=0.1)


def test_orthant_draws_are_the_certificates_draws() -> None:
    # Same proposal and random numbers as the certificate; all draws inside the orthant; the
    # self-normalised mean of g_1 matches E[g_1 | g > 0] estimated by direct rejection.
    c = corr(-0.5)
    ep = ep_orthant(c)
    g, log_w = orthant_draws(c, samples=20_000, seed=4, ep=ep)
    r = certified_log_orthant(c, samples=20_000, seed=4, delta=0.5, ep=ep)
    assert g.shape == (20_000, 2) and np.all(g > 0)
    assert float(np.log(np.mean(np.exp(log_w)))) == pytest.approx(r.log_estimate, rel=1e-12)
    w = np.exp(log_w - log_w.max())
    rng = np.random.default_rng(0)
    direct = rng.standard_normal((400_000, 2)) @ np.linalg.cholesky(c).T
    inside = direct[np.all(direct > 0, axis=1)]
    se = inside[:, 0].std() / math.sqrt(inside.shape[0]) + g[:, 0].std() / math.sqrt(2000)
    assert float(w @ g[:, 0] / w.sum()) == pytest.approx(float(inside[:, 0].mean()), abs=4 * se)

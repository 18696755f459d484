"""A certified lower bound on ln P(g > 0), g ~ N(0, Σ): sequential importance sampling + Markov.

Estimator. With Σ = L Lᵀ (L lower) write g = L z, z ~ N(0, I). Then g_i > 0 iff
z_i > a_i(z_<i) = −(Σ_{j<i} L_ij z_j)/L_ii, so the coordinates can be drawn one after the
other, each from a proposal q_i(z_i | z_<i) supported on (a_i, ∞): the GHK / separation-of-
variables sampler (Genz 1992; Geweke, Hajivassiliou & Keane), here with a *guided* proposal.
The weight w = Π_i φ(z_i) / q_i(z_i | z_<i) has E[w] = P(g > 0) exactly, for every proposal
whose support is the whole half-line (q_i may depend on z_<i; Botev 2017 uses a fixed tilt,
a special case). Every draw lands in the orthant, so w > 0 for every draw: unlike importance
sampling from the EP Gaussian, whose draws all miss the orthant when n is in the thousands.

Proposal (``method="ghk-ep-cavity"``, when an EP fit is given). EP's posterior in z-space is
N(m, P⁻¹), P = I + Lᵀ diag(τ̃) L, m = L⁻¹ μ_EP. With P = Mᵀ M (M lower: a reversed Cholesky
factorisation) its conditional z_i | z_<i is N(m_i − Σ_{j<i} M_ij (z_j − m_j)/M_ii, 1/M_ii²).
Removing EP's Gaussian site of constraint i (in z_i it has precision τ̃_i L_ii² and natural
parameter L_ii(ν̃_i − τ̃_i b_i), b_i = Σ_{j<i} L_ij z_j) gives a cavity N(c, s²) whose
precision is ≥ 1 in exact arithmetic (clamped there); the proposal is that cavity truncated to
(a_i, ∞), where the exact constraint replaces the site. Without EP (``method="ghk"``) it is
N(0, 1) truncated: plain GHK. The proposal only changes the variance of Ẑ, never its mean.
Where the cavity precision exceeds 2 the weight of that coordinate has infinite variance in
principle (the proposal is narrower than half the target's variance); in practice (binary
MNIST, n = 2000: 1 % of coordinates) this proposal's log-weights spread far less than with a
capped precision (std 1.0 against 4.0 capped at 1.9 and 12 with unit variance, 300 draws),
and neither the unbiasedness nor the Markov certificate needs a finite variance.

Certificate. Ẑ = (1/S) Σ_s w_s ≥ 0 with E[Ẑ] = P(U), so by Markov's inequality
P[Ẑ ≥ P(U)/δ] ≤ δ, i.e. ln P(U) ≥ ln Ẑ − ln(1/δ) with probability ≥ 1 − δ over the draws.
Everything is in log space (``log_ndtr``; inverse-CDF truncated sampling through
``ndtri_exp``, exact far in the tail); the result is lowered by a margin that covers the
floating-point error of the log-weight sums. Randomness: ``Generator(PCG64(seed))``, one
``random(S)`` row per coordinate in order, so the result does not depend on ``block``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray
from scipy.special import log_ndtr, logsumexp, ndtri_exp

from pacbound.bounds.validation import check_count, check_delta
from pacbound.errors import InvalidInputError, NumericalError
from pacbound.marginal._linalg import cholesky_lower
from pacbound.marginal.ep import EPResult

_EPS = float(np.finfo(np.float64).eps)
#: Rows per block: earlier blocks enter through one matrix product, rows inside sequentially.
DEFAULT_BLOCK = 256


@dataclass(frozen=True)
class OrthantLowerBound:
    """ln P(U) ≥ ``log_lower`` with probability ≥ 1 − ``delta`` over the recorded draws.

    ``log_estimate`` is ln Ẑ (unbiased for P(U) before the log); ``log_lower`` =
    ln Ẑ − ln(1/δ) − ``margin`` (floating-point cover). Weight statistics describe the
    spread of the S log-weights; ``effective_sample_size`` = (Σw)²/Σw².
    """

    log_estimate: float
    log_lower: float
    delta: float
    samples: int
    seed: int
    log_weight_mean: float
    log_weight_std: float
    effective_sample_size: float
    method: str
    n: int = 0
    margin: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "log_estimate": float(self.log_estimate),
            "log_lower": float(self.log_lower),
            "delta": float(self.delta),
            "samples": int(self.samples),
            "seed": int(self.seed),
            "log_weight_mean": float(self.log_weight_mean),
            "log_weight_std": float(self.log_weight_std),
            "effective_sample_size": float(self.effective_sample_size),
            "method": self.method,
            "n": int(self.n),
            "margin": float(self.margin),
        }


@dataclass
class _Guide:
    """EP's z-space conditional: mean m, lower factor M of the precision, sites τ̃, ν̃."""

    m: NDArray
    factor: NDArray
    tau: NDArray
    nu: NDArray


def _guide(chol: NDArray, ep: EPResult) -> _Guide:
    n = chol.shape[0]
    if ep.mean.shape != (n,) or ep.site_precision.shape != (n,):
        raise InvalidInputError(
            f"EP result has {ep.mean.size} sites for a {n}-dimensional covariance", param="ep"
        )
    a = chol * np.sqrt(ep.site_precision)[:, None]
    prec = a.T @ a
    del a
    prec[np.diag_indices_from(prec)] += 1.0
    rev = cholesky_lower(prec[::-1, ::-1], what="EP precision in whitened coordinates")
    del prec
    factor = np.ascontiguousarray(rev[::-1, ::-1].T)  # P = Mᵀ M, M lower
    m = scipy.linalg.solve_triangular(chol, ep.mean, lower=True, check_finite=False)
    return _Guide(m, factor, ep.site_precision, ep.site_natural_mean)


def _draw_row(
    i: int, b: NDArray, d: NDArray | None, chol: NDArray, guide: _Guide | None, v: NDArray
) -> tuple[NDArray, NDArray, NDArray]:
    """Coordinate i for all S samples: (z_i, log-weight term, |terms| for the margin)."""
    lii = chol[i, i]
    if guide is None or d is None:
        centre, scale = np.zeros_like(b), 1.0
    else:
        mii = guide.factor[i, i]
        prec = mii * mii - guide.tau[i] * lii * lii
        nat = (guide.m[i] - d / mii) * mii * mii - lii * (guide.nu[i] - guide.tau[i] * b)
        prec = max(prec, 1.0)
        centre, scale = nat / prec, 1.0 / math.sqrt(prec)
    t = (-b / lii - centre) / scale
    log_mass = log_ndtr(-t)
    u = -ndtri_exp(np.log(v) + log_mass)
    z = centre + scale * u
    term = 0.5 * (u * u - z * z) + math.log(scale) + log_mass
    size = 0.5 * (u * u + z * z) + abs(math.log(scale)) - log_mass
    return z, term, size


def _sweep(
    chol: NDArray,
    guide: _Guide | None,
    samples: int,
    rng: np.random.Generator,
    block: int,
    g: NDArray | None = None,
) -> tuple[NDArray, NDArray]:
    """Log-weights and |terms| of ``samples`` draws; fills ``g`` (n, S) with g = L z if given."""
    n = chol.shape[0]
    z = np.empty((n, samples))
    w = np.empty((n, samples)) if guide is not None else None  # z − m
    log_w, size = np.zeros(samples), np.zeros(samples)
    for s in range(0, n, block):
        e = min(s + block, n)
        b_blk = chol[s:e, :s] @ z[:s]
        d_blk = guide.factor[s:e, :s] @ w[:s] if guide is not None and w is not None else None
        for i in range(s, e):
            b = b_blk[i - s] + chol[i, s:i] @ z[s:i]
            d = None
            if guide is not None and w is not None and d_blk is not None:
                d = d_blk[i - s] + guide.factor[i, s:i] @ w[s:i]
            v = 1.0 - rng.random(samples)  # in (0, 1]
            z[i], term, sz = _draw_row(i, b, d, chol, guide, v)
            if g is not None:
                g[i] = b + chol[i, i] * z[i]
            if guide is not None and w is not None:
                w[i] = z[i] - guide.m[i]
            log_w += term
            size += sz
    return log_w, size


def _setup(
    cov: NDArray,
    samples: int,
    seed: int,
    ep: EPResult | None,
    jitter: float | None,
    cholesky: NDArray | None,
) -> tuple[NDArray, _Guide | None, np.random.Generator, int]:
    samples = check_count(samples, "samples")
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or cov.shape[0] < 1:
        raise InvalidInputError(f"covariance must be square, got {cov.shape}", param="cov")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}", param="seed")
    chol = (
        cholesky_lower(cov, what="constraint covariance", jitter=jitter)
        if cholesky is None
        else np.asarray(cholesky, dtype=np.float64)
    )
    guide = _guide(chol, ep) if ep is not None else None
    return chol, guide, np.random.Generator(np.random.PCG64(int(seed))), samples


def orthant_draws(
    cov: NDArray,
    *,
    samples: int,
    seed: int,
    ep: EPResult | None = None,
    block: int = DEFAULT_BLOCK,
    jitter: float | None = None,
    cholesky: NDArray | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The importance sampler's draws: g (samples, n), every row in the orthant g > 0, and
    their log-weights (samples,), with exactly :func:`certified_log_orthant`'s proposal and
    random numbers for the same arguments. Self-normalised weights give expectations under
    N(0, cov) conditioned on g > 0 (consistent, not unbiased: for information only).
    """
    chol, guide, rng, samples = _setup(cov, samples, seed, ep, jitter, cholesky)
    g = np.empty((chol.shape[0], samples))
    log_w, _ = _sweep(chol, guide, samples, rng, max(1, int(block)), g)
    return np.ascontiguousarray(g.T), log_w


def certified_log_orthant(
    cov: NDArray,
    *,
    samples: int,
    seed: int,
    delta: float,
    ep: EPResult | None = None,
    block: int = DEFAULT_BLOCK,
    jitter: float | None = None,
    cholesky: NDArray | None = None,
) -> OrthantLowerBound:
    """ln P(g > 0) ≥ ``log_lower`` w.p. ≥ 1 − δ, g ~ N(0, cov) (module docstring).

    ``ep`` (fitted on the same ``cov``) guides the proposal; without it plain GHK is used.
    ``jitter`` is only quoted in the error message if ``cov`` is not positive definite.
    ``cholesky``: the lower Cholesky factor of ``cov`` if already computed (trusted).

    >>> r = certified_log_orthant(np.eye(3), samples=10, seed=0, delta=0.5)
    >>> round(r.log_estimate, 12), r.log_lower < 3 * math.log(0.5)  # exact for independent
    (-2.079441541680, True)
    """
    delta = check_delta(delta, "delta_is")
    chol, guide, rng, samples = _setup(cov, samples, seed, ep, jitter, cholesky)
    log_w, size = _sweep(chol, guide, samples, rng, max(1, int(block)))
    if np.any(np.isnan(log_w)):
        raise NumericalError("importance weights are NaN")
    if not np.any(np.isfinite(log_w)):
        raise NumericalError("importance-sampling estimate of P(U) is zero (weights underflow)")
    log_est = float(logsumexp(log_w) - math.log(samples))
    margin = 64.0 * _EPS * (float(np.max(size)) + abs(log_est) + math.log(samples) + 1.0)
    finite = log_w[np.isfinite(log_w)]
    ess = float(math.exp(2.0 * logsumexp(log_w) - logsumexp(2.0 * log_w)))
    return OrthantLowerBound(
        log_estimate=log_est,
        log_lower=log_est + math.log(delta) - margin,  # ln δ: finite for subnormal δ
        delta=delta,
        samples=samples,
        seed=int(seed),
        log_weight_mean=float(np.mean(finite)),
        log_weight_std=float(np.std(finite)),
        effective_sample_size=ess,
        method="ghk-ep-cavity" if guide is not None else "ghk",
        n=cov.shape[0],
        margin=margin,
    )

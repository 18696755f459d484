"""Expectation propagation for a Gaussian orthant probability P(g > 0), g ~ N(0, Σ).

The target is N(0, Σ) Π_i 1[g_i > 0]; EP replaces each step site by a Gaussian site
t̃_i(g_i) ∝ exp(−τ̃_i g_i²/2 + ν̃_i g_i) (Rasmussen & Williams 2006, §3.6, with the probit
replaced by a step; Cunningham, Hennig & Lacoste-Julien 2011). Updates are *parallel*: all
cavities are formed from the current marginals, all sites are moved at once, damped, then the
posterior marginals are recomputed from the precision Σ⁻¹ + T̃: one Cholesky factorisation
and one triangular inverse per sweep, O(n³) per sweep, so n = 10⁴ is feasible where
sequential rank-one sweeps are not. Step sites are log-concave, so τ̃ ≥ 0 and Σ⁻¹ + T̃ is
positive definite whenever Σ is (its conditioning is Σ's: the documented jitter bounds it).

The returned ``log_z`` is the EP approximation of ln P(g > 0) (R&W eq. 3.65): an
*approximation*, not a bound. Tail quantities are computed with ``log_ndtr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray
from scipy.special import log_ndtr

from pacbound.errors import InvalidInputError, NumericalError
from pacbound.marginal._linalg import cholesky_lower

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
#: Smallest variance ratio Var(truncated)/Var(cavity) an update may produce (round-off guard).
MIN_VARIANCE_RATIO = 1e-12
_BLOCK = 512


@dataclass(frozen=True)
class EPResult:
    """EP's Gaussian approximation of N(0, Σ) restricted to g > 0.

    ``log_z`` approximates ln P(g > 0) (NOT a bound); ``mean`` and ``variance`` are the
    approximate posterior marginals; sites are t̃_i ∝ exp(−τ̃ g²/2 + ν̃ g) with
    ``site_precision`` τ̃ and ``site_natural_mean`` ν̃; ``site_mean`` = ν̃/τ̃ (0 where τ̃ = 0).
    ``max_change`` is the last sweep's largest change of a site parameter.
    """

    log_z: float
    mean: NDArray[np.float64]
    site_precision: NDArray[np.float64]
    site_mean: NDArray[np.float64]
    iterations: int
    converged: bool
    max_change: float
    site_natural_mean: NDArray[np.float64]
    variance: NDArray[np.float64]

    def to_dict(self) -> dict[str, Any]:
        """Scalars only (the arrays are recomputed by a verifier, never stored in reports)."""
        return {
            "log_z": float(self.log_z),
            "iterations": int(self.iterations),
            "converged": bool(self.converged),
            "max_change": float(self.max_change),
            "n": int(self.mean.size),
        }


class _Precision:
    """Posterior marginals of N(0, Σ) Π t̃_i through the precision Σ⁻¹ + T̃ (T̃ = diag τ̃).

    Σ⁻¹ is formed once from the Cholesky factor of Σ; each sweep then costs one Cholesky
    factorisation G Gᵀ = Σ⁻¹ + T̃ and one triangular inverse (2n³/3 flops, half of R&W's
    B-form), with ln|B| = ln|Σ| + ln|Σ⁻¹ + T̃|.
    """

    def __init__(self, chol: NDArray) -> None:
        inv, info = scipy.linalg.lapack.dpotri(chol, lower=1)
        if info != 0:
            raise NumericalError(f"inverting the covariance failed (LAPACK info {info})")
        for s in range(0, inv.shape[0], _BLOCK):  # mirror the lower triangle, in place
            inv[s : s + _BLOCK, s + _BLOCK :] = inv[s + _BLOCK :, s : s + _BLOCK].T
            blk = inv[s : s + _BLOCK, s : s + _BLOCK]
            blk[...] = np.tril(blk) + np.tril(blk, -1).T
        self.inv = inv
        self.log_det_cov = 2.0 * float(np.sum(np.log(np.diag(chol))))

    def marginals(self, tau: NDArray, nu: NDArray) -> tuple[NDArray, NDArray, float]:
        """(mean, variance, ln|B|) for sites τ̃, ν̃."""
        a = self.inv.copy()
        a[np.diag_indices_from(a)] += tau
        g = cholesky_lower(a, what="EP posterior precision", overwrite=True)
        del a
        mean = scipy.linalg.cho_solve((g, True), nu, check_finite=False)
        log_det_b = self.log_det_cov + 2.0 * float(np.sum(np.log(np.diag(g))))
        g_inv, info = scipy.linalg.lapack.dtrtri(g, lower=1, overwrite_c=1)
        if info != 0:
            raise NumericalError(f"EP triangular inverse failed (LAPACK info {info})")
        var = np.einsum("ij,ij->j", g_inv, g_inv)  # diag(G⁻ᵀ G⁻¹)
        return mean, var, log_det_b


def _moments(mu_c: NDArray, var_c: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """ln Z_i, mean and variance of N(mu_c, var_c) truncated to (0, ∞)."""
    sd = np.sqrt(var_c)
    z = mu_c / sd
    log_z = log_ndtr(z)
    ratio = np.exp(-0.5 * z * z - _LOG_SQRT_2PI - log_z)  # φ(z)/Φ(z), stable in the tail
    mean = mu_c + sd * ratio
    var = var_c * np.maximum(1.0 - ratio * (z + ratio), MIN_VARIANCE_RATIO)
    return log_z, mean, var


def _log_z(log_det_b: float, mean: NDArray, var: NDArray, tau: NDArray, nu: NDArray) -> float:
    """ln Z_EP = Σ ln Z_i − Σ ln C_i + ln ∫ N(g; 0, Σ) Π t̃_i(g_i) dg at the fixed point.

    Z_i = Φ(μ₋ᵢ/σ₋ᵢ) is the cavity's mass on g_i > 0 and C_i = ∫ N(g; μ₋ᵢ, σ₋ᵢ²) t̃_i(g) dg,
    so each site is scaled to carry Z_i (R&W eq. 3.65 in natural parameters):
    −ln C_i = ½ ln(1 + τ̃/τ₋ᵢ) − (ν₋ᵢ + ν̃)²/(2(τ₋ᵢ + τ̃)) + ν₋ᵢ²/(2τ₋ᵢ), and
    ln ∫ N(0, Σ) Π t̃ = −½ ln|B| + ½ ν̃ᵀ μ.
    """
    tau_c = 1.0 / var - tau
    nu_c = mean / var - nu
    log_zi, _, _ = _moments(nu_c / tau_c, 1.0 / tau_c)
    minus_log_c = (
        0.5 * np.log1p(tau / tau_c)
        - (nu_c + nu) ** 2 / (2.0 * (tau_c + tau))
        + nu_c**2 / (2.0 * tau_c)
    )
    total = float(np.sum(log_zi) + np.sum(minus_log_c) - 0.5 * log_det_b + 0.5 * (nu @ mean))
    if not math.isfinite(total):
        raise NumericalError("EP log marginal likelihood is not finite")
    return total


def ep_orthant(
    cov: NDArray,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    damping: float = 0.5,
    cholesky: NDArray | None = None,
) -> EPResult:
    """Parallel damped EP for P(g > 0), g ~ N(0, cov); NumericalError if not converged.

    ``cholesky``: the lower Cholesky factor of ``cov`` if already computed (saves n³/3).
    ``damping`` ∈ (0, 1] is the step towards the new sites (1 = undamped). Convergence: the
    largest change of τ̃_i·Σ_ii and ν̃_i·√Σ_ii (scale-free) in a sweep is below ``tol``.

    >>> round(ep_orthant(np.array([[2.0]])).log_z, 12)  # one site: EP is exact, ln(1/2)
    -0.69314718056
    """
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or cov.shape[0] < 1:
        raise InvalidInputError(f"covariance must be square, got {cov.shape}", param="cov")
    if not 0.0 < damping <= 1.0:
        raise InvalidInputError(f"damping must be in (0, 1], got {damping}", param="damping")
    n = cov.shape[0]
    scale = np.diag(cov).copy()
    if np.any(scale <= 0):
        raise NumericalError("covariance has a non-positive diagonal entry")
    if cholesky is None:
        cholesky = cholesky_lower(cov, what="constraint covariance")
    precision = _Precision(cholesky)
    tau, nu = np.zeros(n), np.zeros(n)
    mean, var = np.zeros(n), scale.copy()
    change = math.inf
    for sweep in range(1, max_iter + 1):
        tau_c = np.maximum(1.0 / var - tau, 1e-300)
        nu_c = mean / var - nu
        _, m_hat, v_hat = _moments(nu_c / tau_c, 1.0 / tau_c)
        tau_new = np.maximum(1.0 / v_hat - tau_c, 0.0)
        nu_new = m_hat / v_hat - nu_c
        tau_next = (1.0 - damping) * tau + damping * tau_new
        nu_next = (1.0 - damping) * nu + damping * nu_new
        change = float(
            max(
                np.max(np.abs(tau_next - tau) * scale),
                np.max(np.abs(nu_next - nu) * np.sqrt(scale)),
            )
        )
        tau, nu = tau_next, nu_next
        mean, var, log_det_b = precision.marginals(tau, nu)
        if not (np.all(np.isfinite(mean)) and np.all(var > 0)):
            raise NumericalError(f"EP produced invalid marginals at sweep {sweep}")
        if change < tol:
            log_z = _log_z(log_det_b, mean, var, tau, nu)
            site_mean = np.divide(nu, tau, out=np.zeros(n), where=tau > 0)
            return EPResult(log_z, mean, tau, site_mean, sweep, True, change, nu, var)
    raise NumericalError(
        f"EP did not converge in {max_iter} sweeps (last change {change:.3g} > tol {tol:g}); "
        "the prior's covariance on S is nearly singular, or labels nearly contradict it "
        "(near-duplicate inputs with different labels); a jitter grid fixed in advance may "
        "help (library callers: raise max_iter or lower the damping)"
    )

"""Q's error on held-out data, ESTIMATED (for information; not a bound).

Q is the GP prior conditioned on fitting S. Its predictions at a test input x* are drawn by
drawing the training latents f from Q, then f(x*) from the GP conditional given f:

    f(x*) | f ~ N(k*ᵀ K⁻¹ f, k** − k*ᵀ K⁻¹ k*)        (K, k*, k** include the jitter)

Draws of f from Q come from sequential importance sampling (GHK, as the certified bound's
sampler but with the plain truncated-normal proposal): with cov = L Lᵀ and g = L z, each z_i
is drawn from N(0, 1) truncated to z_i > a_i(z_<i) = −Σ_{j<i} L_ij z_j / L_ii, so every draw
fits S, with weight w = Π_i Φ(−a_i) (self-normalised). For binary labels g = D f
(D = diag(±1) of the labels), so f = D g. The error at x* given f is Φ(−y* μ*/s*) in closed
form (Rao–Blackwellised), so

    estimate = Σ_j w̄_j · (1/m) Σ_i Φ(−y_i μ_i(f_j)/s_i).

Self-normalised importance sampling is consistent, not unbiased, and its error is not
bounded here: the number is labelled an estimate wherever it is shown. Multi-class Q
(constraints on differences of C GPs) would need f given the constraint variables; it is
refused with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve
from scipy.special import log_ndtr, ndtri_exp
from torch import Tensor

from pacbound.certify.marginal_kernel import joint_kernel
from pacbound.certify.marginal_options import MarginalOptions, derived_seed
from pacbound.errors import InvalidInputError, NumericalError

NOTE = (
    "estimate of Q's held-out error by self-normalised importance sampling from the "
    "conditioned GP: for information, not a bound"
)


@dataclass(frozen=True)
class HeldoutSet:
    """Held-out inputs and labels (never used for anything else), and the checkpoint's error
    on them when a checkpoint was given (for information)."""

    x: Tensor
    labels: np.ndarray
    checkpoint_error: float | None = None


def refuse_multiclass(classes: int) -> None:
    """The held-out estimate is implemented for two classes (checked before any work)."""
    if classes != 2:
        raise InvalidInputError(
            f"--heldout with --method marginal estimates Q's error for two classes only; the "
            f"data have {classes}: give --label-map to make the task binary (e.g. "
            "0-4:0,5-9:1), or drop --heldout",
            param="--heldout",
        )


def _conditional(joint: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A = K⁻¹ k* (n, m) and the conditional standard deviations s (m,)."""
    try:
        factor = cho_factor(joint[:n, :n], lower=True, check_finite=True)
    except np.linalg.LinAlgError:
        raise NumericalError(
            "the kernel on the training inputs is not positive definite after the jitter "
            "(held-out estimate); give a larger --jitter"
        ) from None
    cross = joint[:n, n:]
    a = cho_solve(factor, cross, check_finite=False)
    var = np.diag(joint[n:, n:]) - np.einsum("ij,ij->j", cross, a)
    return a, np.sqrt(np.maximum(var, np.finfo(np.float64).tiny))


def orthant_draws(cov: np.ndarray, *, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` GHK draws g ∈ U of N(0, cov) (rows) and their log-weights (see the module
    docstring); the generator is ``PCG64(seed)``, one row of uniforms per coordinate."""
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise NumericalError(
            "the constraint covariance is not positive definite after the jitter (held-out "
            "estimate); give a larger --jitter"
        ) from None
    rng = np.random.Generator(np.random.PCG64(seed))
    n = cov.shape[0]
    z = np.empty((n, samples))
    log_w = np.zeros(samples)
    for i in range(n):
        a = -(chol[i, :i] @ z[:i]) / chol[i, i]
        log_mass = log_ndtr(-a)  # P(z_i > a)
        v = 1.0 - rng.random(samples)  # in (0, 1]
        z[i] = -ndtri_exp(np.log(v) + log_mass)  # inverse CDF of the upper tail, stable
        log_w += log_mass
    return (chol @ z).T, log_w


def heldout_estimate(
    spec: Any,
    options: MarginalOptions,
    sample: Any,
    cov: np.ndarray,
    heldout: HeldoutSet,
    *,
    device: torch.device,
) -> dict[str, Any]:
    """The results' ``heldout`` block (see the module docstring)."""
    refuse_multiclass(sample.classes)
    n, m = int(sample.labels.shape[0]), int(heldout.labels.shape[0])
    joint = joint_kernel(spec, options, sample.x, heldout.x, device)
    a, s = _conditional(joint, n)
    seed = derived_seed(options.seed, "heldout")
    draws, log_weights = orthant_draws(cov, samples=options.is_samples, seed=seed)
    finite = np.isfinite(log_weights)
    if not finite.any():
        raise NumericalError(
            "no importance-sampling draw for the held-out estimate fits S (all weights are "
            "zero); give more --is-samples"
        )
    w = np.exp(log_weights[finite] - log_weights[finite].max())
    w /= w.sum()
    signs = np.where(sample.labels == 1, 1.0, -1.0)
    f = draws[finite] * signs  # g = D f, D = diag(±1)
    t = np.where(heldout.labels == 1, 1.0, -1.0)
    errors = np.exp(log_ndtr(-(f @ a) * t / s))  # (draws, m): P(sign f(x*) ≠ y*)
    estimate = float(w @ errors.mean(axis=1))
    return {
        "examples": m,
        "q_error_estimate": estimate,
        "draws": int(options.is_samples),
        "draws_in_u": int(finite.sum()),
        "effective_sample_size": float(1.0 / np.sum(w * w)),
        "seed": seed,
        "checkpoint_error": heldout.checkpoint_error,
        "note": NOTE,
    }

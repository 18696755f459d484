"""Q's error on held-out data, ESTIMATED (for information; not a bound).

Q is the GP prior conditioned on fitting S. Its predictions at a test input x* are drawn by
drawing the training latents f from Q, then f(x*) from the GP conditional given f:

    f(x*) | f ~ N(k*ᵀ K⁻¹ f, k** − k*ᵀ K⁻¹ k*)        (K, k*, k** include the jitter)

Draws of f from Q are the certificate's own importance-sampling draws
(:func:`pacbound.marginal.orthant_draws`: the EP-guided GHK sampler with the certificate's
seed, every draw in U), weighted by their importance weights, self-normalised. For binary
labels g = D f (D = diag(±1) of the labels), so f = D g. The error at x* given f is
Φ(−y* μ*/s*) in closed form (Rao–Blackwellised), so

    estimate = Σ_j w̄_j · (1/m) Σ_i Φ(−y_i μ_i(f_j)/s_i).

More than two classes (argmax of C independent GPs f_1..f_C with kernel K): the draws are of
the n(C − 1) constraint variables g = A F (g_{i,c} = f_{y_i}(x_i) − f_c(x_i)). They fix every
difference f_c(x_i) − f_c'(x_i) and leave one direction per input free, the common mode
(the same function added to every class), which cancels in the argmax. So F given g is
E[F | g] = Cov(F, g) Σ_g⁻¹ g plus a common mode that never changes a prediction (pathwise
conditioning would add F₀ − Cov(F, g) Σ_g⁻¹ A F₀ for a prior draw F₀: a common mode, checked
to cancel), with Cov(F, g) v = W K, W_{y_i, i} = Σ_c v_{i,c}, W_{c, i} = −v_{i,c}. The test
means are μ_c(x*) = k*ᵀ K⁻¹ f_c = (W k*)_c; the conditional standard deviation s(x*) is shared
by the classes, so the error at x* given g is Rao–Blackwellised as
1 − E_u[Π_{c ≠ y*} Φ((μ_{y*} − μ_c)/s + u)], u ~ N(0, 1), by Gauss–Hermite quadrature (the
integrand has unit scale in u whatever s).

Self-normalised importance sampling is consistent, not unbiased, and its error is not
bounded here: the number is labelled an estimate wherever it is shown, with the effective
sample size of its weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss
from scipy.linalg import cho_factor, cho_solve
from scipy.special import log_ndtr
from torch import Tensor

from pacbound.certify.marginal_kernel import joint_kernel
from pacbound.certify.marginal_options import MarginalOptions
from pacbound.errors import NumericalError

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


#: Gauss–Hermite nodes of the multi-class error's one-dimensional integral (probabilists').
QUADRATURE_NODES = 48
#: |z| beyond which Φ(z + u) is exactly 0 or 1 in float64 at every quadrature node u.
_Z_MAX = 60.0
#: Doubles per chunk of the multi-class quadrature (draws × test points × classes × nodes).
_CHUNK = 1 << 22


@dataclass(frozen=True)
class _Conditional:
    """The GP conditional of the test inputs given the training latents: A = K⁻¹ k* (n, m),
    the cross covariance k* (n, m) and the standard deviations s (m,)."""

    a: np.ndarray
    cross: np.ndarray
    s: np.ndarray


def _conditional(joint: np.ndarray, n: int) -> _Conditional:
    try:
        factor = cho_factor(joint[:n, :n], lower=True, check_finite=True)
    except np.linalg.LinAlgError:
        raise NumericalError(
            "the kernel on the training inputs is not positive definite after the jitter "
            "(held-out estimate)"
        ) from None
    cross = joint[:n, n:]
    a = cho_solve(factor, cross, check_finite=False)
    var = np.diag(joint[n:, n:]) - np.einsum("ij,ij->j", cross, a)
    s = np.sqrt(np.maximum(var, np.finfo(np.float64).tiny))
    return _Conditional(a, cross, s)


def _binary_errors(
    draws: np.ndarray, labels: np.ndarray, cond: _Conditional, test: np.ndarray
) -> np.ndarray:
    """(draws, m): P(sign f(x*) ≠ y*) given the training latents f = D g."""
    signs = np.where(labels == 1, 1.0, -1.0)
    t = np.where(test == 1, 1.0, -1.0)
    return np.exp(log_ndtr(-((draws * signs) @ cond.a) * t / cond.s))


def _constraint_index(labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The example i and the other class c of each constraint row (orthant.py's order)."""
    n = labels.size
    rows = np.repeat(np.arange(n), classes - 1)
    others = np.array([[c for c in range(classes) if c != y] for y in labels]).reshape(-1)
    return rows, others


def multiclass_errors(
    draws: np.ndarray,
    labels: np.ndarray,
    classes: int,
    cond: _Conditional,
    test: np.ndarray,
    *,
    cov_factor: np.ndarray,
) -> np.ndarray:
    """(draws, m): P(argmax_c f_c(x*) ≠ y*) given each draw of the constraint variables
    (module docstring: the latents' conditional mean given g, then quadrature)."""
    count, n = draws.shape[0], labels.size
    rows, others = _constraint_index(labels, classes)
    v = cho_solve((cov_factor, True), draws.T, check_finite=False).T  # Σ_g⁻¹ g
    w = np.zeros((count, classes, n))
    w[:, others, rows] = -v
    w[:, labels, np.arange(n)] = v.reshape(count, n, classes - 1).sum(axis=2)
    nodes, weights = hermegauss(QUADRATURE_NODES)
    weights = weights / math.sqrt(2.0 * math.pi)
    m = test.size
    errors = np.empty((count, m))
    step = max(1, _CHUNK // max(1, count * classes * QUADRATURE_NODES))
    for start in range(0, m, step):
        cols = np.arange(start, min(start + step, m))
        mu = w @ cond.cross[:, cols]  # (draws, C, chunk): k*ᵀ K⁻¹ E[f_c | g] = (W K K⁻¹ k*)_c
        own = mu[:, test[cols], np.arange(cols.size)]  # (draws, chunk)
        z = (own[:, None, :] - mu) / cond.s[cols]  # (draws, C, chunk)
        z = np.clip(z, -_Z_MAX, _Z_MAX)  # Φ(±60 + u) is 0 or 1 in float64 at every node
        mask = np.arange(classes)[:, None] != test[cols][None, :]  # (C, chunk): c ≠ y*
        logs = log_ndtr(z[..., None] + nodes)  # (draws, C, chunk, nodes)
        log_correct = np.where(mask[None, :, :, None], logs, 0.0).sum(axis=1)
        errors[:, cols] = 1.0 - np.exp(log_correct) @ weights
    return np.clip(errors, 0.0, 1.0)


def heldout_estimate(
    spec: Any,
    options: MarginalOptions,
    sample: Any,
    cov: np.ndarray,
    heldout: HeldoutSet,
    *,
    ep: Any,
    cholesky: np.ndarray,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """The results' ``heldout`` block (see the module docstring); ``ep``, ``cholesky`` and
    ``seed`` are the certificate's (its proposal, the factor of ``cov``, its draws)."""
    from pacbound.marginal import orthant_draws

    n, m = int(sample.labels.shape[0]), int(heldout.labels.shape[0])
    joint = joint_kernel(spec, options, sample.x, heldout.x, device)
    cond = _conditional(joint, n)
    del joint
    draws, log_weights = orthant_draws(
        cov, samples=options.is_samples, seed=seed, ep=ep, cholesky=cholesky
    )
    finite = np.isfinite(log_weights)
    if not finite.any():
        raise NumericalError(
            "no importance-sampling draw for the held-out estimate fits S (all weights are "
            "zero); give more --is-samples"
        )
    w = np.exp(log_weights[finite] - log_weights[finite].max())
    w /= w.sum()
    if sample.classes == 2:
        errors = _binary_errors(draws[finite], sample.labels, cond, heldout.labels)
    else:
        errors = multiclass_errors(
            draws[finite],
            sample.labels,
            sample.classes,
            cond,
            heldout.labels,
            cov_factor=cholesky,
        )
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

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
from scipy.special import log_ndtr
from torch import Tensor

from pacbound.certify.marginal_kernel import joint_kernel
from pacbound.certify.marginal_options import MarginalOptions
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

    refuse_multiclass(sample.classes)
    n, m = int(sample.labels.shape[0]), int(heldout.labels.shape[0])
    joint = joint_kernel(spec, options, sample.x, heldout.x, device)
    a, s = _conditional(joint, n)
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

"""Architecture-only certificates: the marginal-likelihood PAC-Bayes bound of the random sampler.

The prior P is the Gaussian process of a random network (its NNGP kernel, :mod:`.kernels`, or
a Monte-Carlo kernel of any architecture, :mod:`.mc_kernel`); the posterior Q is P
conditioned on fitting the n training labels (the "random sampler"), so L̂(Q) = 0 and
KL(Q‖P) = ln(1/P(U)) (MATH.md §12). P(U) is a Gaussian orthant probability
(:func:`.orthant.constraint_covariance`); EP approximates it (information only), and the
certificate uses a certified lower bound (:func:`.ghk.certified_log_orthant`: sequential
importance sampling, unbiased and positive, plus Markov's inequality), then
:func:`.bound.marginal_bound`. Total confidence 1 − δ − δ_IS.

Pure NumPy/SciPy except :mod:`.mc_kernel` (torch, imported lazily by callers).
"""

from pacbound.marginal.bound import marginal_bound, matrix_bytes, max_n_for_memory
from pacbound.marginal.ep import EPResult, ep_orthant
from pacbound.marginal.ghk import OrthantLowerBound, certified_log_orthant, orthant_draws
from pacbound.marginal.kernels import KernelSpec, add_jitter, conv_nngp, fc_nngp, kernel_matrix
from pacbound.marginal.orthant import constraint_covariance


def __getattr__(name: str) -> object:
    """``monte_carlo_kernel`` is loaded on first use (it imports torch)."""
    if name == "monte_carlo_kernel":
        from pacbound.marginal.mc_kernel import monte_carlo_kernel

        return monte_carlo_kernel
    raise AttributeError(f"module 'pacbound.marginal' has no attribute {name!r}")


__all__ = [
    "EPResult",
    "KernelSpec",
    "OrthantLowerBound",
    "add_jitter",
    "certified_log_orthant",
    "constraint_covariance",
    "conv_nngp",
    "ep_orthant",
    "fc_nngp",
    "kernel_matrix",
    "marginal_bound",
    "matrix_bytes",
    "max_n_for_memory",
    "monte_carlo_kernel",
    "orthant_draws",
]

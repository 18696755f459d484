"""A teacher drawn from the GP prior itself: the soundness harness's check of the marginal
certificate, where the true risk of the random sampler Q is measured by exact sampling.

One run (seed r): inputs x ~ N(0, I_d), n training and T test points; the teacher f* is one
draw of the GP (kernel + jitter) jointly on all n + T points, labels y = 1[f* > 0]. Given
the teacher, the test points are i.i.d. from the data distribution, and drawing f* jointly on
the sampled points is the same as drawing it first and then the points. The certificate is
the package's: EP-guided certified ln P(U) (δ_IS) and :func:`~.bound.marginal_bound` (δ).

Truth. Q = prior conditioned on U = {f fits S}; for each test point t one independent draw
f_train ~ Q by rejection sampling from the prior (exact: accept iff every training sign
matches), then f(x_t) | f_train is the prior's Gaussian conditional (Q conditions on f_train
only). e_t = P(sign f(x_t) ≠ y_t | f_train) = Φ(−s_t μ_t/σ_t) is computed exactly; the truth
estimate is mean_t e_t (unbiased for L(Q)), and b_t = 1[U_t < e_t] are i.i.d.
Bernoulli(L(Q)), so a Clopper–Pearson upper limit on their mean is a valid upper confidence
limit for L(Q).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray
from scipy.special import ndtr

from pacbound.bounds import clopper_pearson_upper
from pacbound.errors import InvalidInputError, NumericalError
from pacbound.marginal._linalg import cholesky_lower
from pacbound.marginal.bound import marginal_bound
from pacbound.marginal.ghk import certified_log_orthant
from pacbound.marginal.kernels import KernelSpec, kernel_matrix
from pacbound.marginal.orthant import constraint_covariance, ep_orthant

MAX_TRAIN = 12
_PROPOSAL_BATCH = 65536


def _default_kernel() -> KernelSpec:
    return KernelSpec("relu", 1, 1.0, 0.3, 1e-6)


@dataclass(frozen=True)
class GPTeacherTask:
    """Sizes and δ split of the GP-teacher runs (δ for PAC-Bayes, δ_IS for ln P(U))."""

    dim: int = 2
    n: int = 8
    test_points: int = 500
    kernel: KernelSpec = field(default_factory=_default_kernel)
    delta: float = 0.04
    delta_is: float = 0.01
    is_samples: int = 200
    truth_delta: float = 0.01
    max_proposals: int = 50_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.n <= MAX_TRAIN:
            raise InvalidInputError(
                f"GP-teacher n must be in [1, {MAX_TRAIN}] (rejection sampling), got {self.n}",
                param="n",
            )
        if self.kernel.name not in ("relu", "erf"):
            raise InvalidInputError("GP-teacher kernel must be relu or erf", param="kernel")


@dataclass(frozen=True)
class TeacherRun:
    """One run: the certified bound and Q's true risk (estimate and upper limit)."""

    seed: int
    bound: float
    truth: float
    truth_upper: float
    log_p_u_lower: float
    log_p_u_estimate: float
    ep_log_z: float
    proposals: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _draw_posterior(
    chol: NDArray, y: NDArray, count: int, rng: np.random.Generator, max_proposals: int
) -> tuple[NDArray, int]:
    """``count`` exact draws of f_train ~ prior | signs = 2y − 1 (rejection), and proposals."""
    signs = 2.0 * y - 1.0
    kept, total, proposals = [], 0, 0
    batch = 1024
    while total < count:
        if proposals >= max_proposals:
            raise NumericalError(
                f"rejection sampling accepted {total} of {proposals} proposals (P(U) too small)"
            )
        f = rng.standard_normal((batch, chol.shape[0])) @ chol.T
        proposals += batch
        batch = min(2 * batch, _PROPOSAL_BATCH)
        ok = f[np.all(f * signs > 0, axis=1)]
        kept.append(ok)
        total += ok.shape[0]
    return np.concatenate(kept)[:count], proposals


def sample_teacher(
    task: GPTeacherTask, seed: int
) -> tuple[NDArray, NDArray, NDArray, np.random.Generator]:
    """Inputs (n + T, d), labels (n + T,), their jittered kernel, and the run's generator
    (training points first)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0])))
    n, t = task.n, task.test_points
    x = rng.standard_normal((n + t, task.dim))
    k_all = kernel_matrix(task.kernel, x)
    teacher = cholesky_lower(k_all, what="GP-teacher kernel") @ rng.standard_normal(n + t)
    return x, (teacher > 0).astype(np.int64), k_all, rng


def run_teacher(task: GPTeacherTask, seed: int) -> TeacherRun:
    """One GP-teacher run (module docstring); reproducible from ``seed``."""
    n, t = task.n, task.test_points
    _, y, k_all, rng = sample_teacher(task, seed)
    k_nn = k_all[:n, :n]
    cov = constraint_covariance(k_nn, y[:n], 2)
    ep = ep_orthant(cov)
    is_seed = int(np.random.SeedSequence([int(seed), 1]).generate_state(1)[0])
    lower = certified_log_orthant(
        cov, samples=task.is_samples, seed=is_seed, delta=task.delta_is, ep=ep
    )
    bound = marginal_bound(lower.log_lower, n, task.delta).value
    chol_nn = cholesky_lower(k_nn, what="GP-teacher training kernel")
    f_train, proposals = _draw_posterior(chol_nn, y[:n], t, rng, task.max_proposals)
    gain = scipy.linalg.cho_solve((chol_nn, True), k_all[:n, n:], check_finite=False).T
    mean = np.einsum("tn,tn->t", gain, f_train)
    var = np.maximum(np.diag(k_all)[n:] - np.einsum("tn,nt->t", gain, k_all[:n, n:]), 1e-300)
    errors = ndtr(-(2.0 * y[n:] - 1.0) * mean / np.sqrt(var))
    hits = int(np.sum(rng.random(t) < errors))
    return TeacherRun(
        seed=int(seed),
        bound=float(bound),
        truth=float(np.mean(errors)),
        truth_upper=clopper_pearson_upper(hits, t, task.truth_delta),
        log_p_u_lower=lower.log_lower,
        log_p_u_estimate=lower.log_estimate,
        ep_log_z=ep.log_z,
        proposals=proposals,
    )

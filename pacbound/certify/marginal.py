"""The marginal-likelihood certificate (MATH.md §12): choose a kernel, certify it.

Q is the prior over functions (a Gaussian process with the architecture's kernel plus
``jitter``·white noise, fixed before S is seen) conditioned on fitting the n training labels:
L̂(Q) = 0 and KL(Q‖P) = −ln P(U). With a certified lower bound P̲(U) (importance sampling
with the EP Gaussian as proposal, then Markov's inequality: :mod:`pacbound.marginal`):

    L(Q) ≤ kl⁻¹(0, [−ln P̲(U) + ln(2√n/δ_PB)] / n),

with probability ≥ 1 − δ_PB − δ_IS (each divided by the size of the kernel grid: a union
bound over its points, the chosen one being the point of the smallest certified bound).

* :func:`certify_point` is the certify phase that ``certify`` and ``verify`` both run on
  one kernel (one grid point): kernel matrix, EP (an approximation, shown for information),
  the certified lower bound, the bound, the verdict and the held-out estimate;
* :func:`choose_kernel` certifies every grid point and keeps the smallest bound.

The whole computation is one dense linear-algebra job on one process; under ``torchrun``
every rank computes it (replicated, not sharded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pacbound.bounds import BoundResult, DeltaBudget
from pacbound.certify.common import Timer, Verdict
from pacbound.certify.marginal_heldout import HeldoutSet, heldout_estimate
from pacbound.certify.marginal_kernel import kernel_on, kernel_spec
from pacbound.certify.marginal_options import MarginalOptions, derived_seed
from pacbound.errors import NumericalError

#: What the EP number is, said wherever it is shown.
EP_NOTE = "EP approximation of ln P(U): not a bound, shown for information"


@dataclass(frozen=True)
class Sample:
    """The training sample S as the kernel sees it: inputs, labels 0..C−1, C."""

    x: Tensor  # (n, …) as loaded (float64 for the analytic kernels, float32 for a network)
    labels: np.ndarray  # (n,) int64
    classes: int
    label_map: str | None


@dataclass(frozen=True)
class PointCertificate:
    """The certificate of one kernel (one grid point) and its results block."""

    index: int
    spec: Any  # pacbound.marginal.KernelSpec
    bound: BoundResult
    budget: DeltaBudget
    verdict: Verdict
    results: Mapping[str, Any]


def _labels_block(sample: Sample, constraints: int) -> dict[str, Any]:
    """``results.labels``: C, the number of constraints, the class counts, the label map."""
    counts = np.bincount(sample.labels, minlength=sample.classes)
    return {
        "classes": sample.classes,
        "constraints": constraints,
        "counts": [int(c) for c in counts],
        "label_map": sample.label_map,
    }


def _ep_block(ep: Any, approximate_bound: float) -> dict[str, Any]:
    """``results.ep``: EP's ln Z (an approximation) and the bound it would give."""
    return {
        "log_z": float(ep.log_z),
        "approximate_bound": approximate_bound,
        "iterations": int(ep.iterations),
        "converged": bool(ep.converged),
        "max_change": float(ep.max_change),
        "note": EP_NOTE,
    }


def certify_point(
    index: int,
    sample: Sample,
    options: MarginalOptions,
    *,
    heldout: HeldoutSet | None = None,
    device: torch.device | None = None,
    timer: Timer | None = None,
) -> PointCertificate:
    """The certify phase on grid point ``index`` (see the module docstring)."""
    from pacbound.marginal import (
        certified_log_orthant,
        constraint_covariance,
        ep_orthant,
        marginal_bound,
    )

    timer = timer or Timer()
    device = device or torch.device("cpu")
    spec = kernel_spec(options, index, sample.classes)
    budget = options.budget()
    pac, imp = budget.part("pac-bayes"), budget.part("importance-sampling")
    n = int(sample.labels.shape[0])
    with timer.phase("kernel"):
        kernel = kernel_on(spec, options, sample.x, device)
    with timer.phase("ep"):
        cov = constraint_covariance(kernel, sample.labels, sample.classes)
        del kernel  # n² doubles: the held-out estimate computes its own joint kernel
        chol = _cholesky(cov, spec.jitter)
        ep = ep_orthant(cov, cholesky=chol)
    seed = derived_seed(options.seed, "importance-sampling")
    with timer.phase("importance_sampling"):
        lower = certified_log_orthant(
            cov, samples=options.is_samples, seed=seed, delta=imp.per_choice, ep=ep, cholesky=chol
        )
    log_lower = min(float(lower.log_lower), 0.0)  # P(U) ≤ 1 whatever Ẑ says
    bound = marginal_bound(log_lower, n, pac.per_choice)
    approximate = marginal_bound(min(float(ep.log_z), 0.0), n, pac.per_choice)
    verdict = Verdict(bound.value, sample.classes)
    results: dict[str, Any] = {
        "method": "marginal",
        "certified_classifier": _classifier(spec),
        "inequality": "pac-bayes-kl",
        "bound": bound.value,
        "n": n,
        "empirical_risk": {"estimate": 0.0, "upper_bound": 0.0},
        "kl_nats": 0.0 - log_lower,
        "verdict": verdict.to_dict(),
        "delta_budget": budget.to_dict(),
        "certificate_terms": bound.to_dict(),
        "kernel": {**spec.to_dict(), "grid_index": index, "grid_size": options.grid_size},
        "labels": _labels_block(sample, int(cov.shape[0])),
        "ep": _ep_block(ep, approximate.value),
        "log_orthant": lower.to_dict(),
        "gap_nats": float(ep.log_z) - log_lower,
        "heldout": None,
    }
    if heldout is not None:
        with timer.phase("heldout"):
            results["heldout"] = heldout_estimate(
                spec,
                options,
                sample,
                cov,
                heldout,
                ep=ep,
                cholesky=chol,
                seed=seed,
                device=device,
            )
    return PointCertificate(index, spec, bound, budget, verdict, results)


def _cholesky(cov: np.ndarray, jitter: float) -> np.ndarray:
    """The lower Cholesky factor of the constraint covariance, shared by EP, the certified
    bound and the held-out draws; NumericalError (exit 4) when it is not positive definite."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        mean = float(np.mean(np.diag(cov)))
        raise NumericalError(
            f"the prior's kernel is not positive definite after --jitter {jitter:g} (its "
            f"Cholesky factorisation failed): give a larger --jitter (e.g. 1e-6 × the mean "
            f"diagonal, {1e-6 * mean:.3g}) or remove nearly identical inputs"
        ) from None


def _classifier(spec: Any) -> str:
    """What Q is, in words."""
    if spec.name == "monte-carlo":
        kind = (
            f"Monte-Carlo kernel of {spec.extra['architecture']} "
            f"({spec.extra['draws']} random initialisations)"
        )
    else:
        kind = (
            f"{spec.name} NNGP kernel, depth {spec.depth}, σ_w = {spec.sigma_w:g}, "
            f"σ_b = {spec.sigma_b:g}"
        )
    return (
        f"Q: the GP prior ({kind}, jitter {spec.jitter:g}) conditioned on fitting S exactly "
        "(the random sampler)"
    )


def choose_kernel(
    sample: Sample,
    options: MarginalOptions,
    *,
    heldout: HeldoutSet | None = None,
    device: torch.device | None = None,
    timer: Timer | None = None,
) -> tuple[PointCertificate, list[dict[str, Any]]]:
    """Certify every grid point; keep the smallest certified bound (the union bound pays for
    the choice). Returns the chosen point's certificate (with the held-out estimate) and the
    search record."""
    search: list[dict[str, Any]] = []
    best: PointCertificate | None = None
    single = options.grid_size == 1
    for index in range(options.grid_size):
        point = certify_point(
            index, sample, options, heldout=heldout if single else None, device=device, timer=timer
        )
        search.append(
            {
                "grid_index": index,
                "sigma_w": point.spec.sigma_w,
                "sigma_b": point.spec.sigma_b,
                "log_lower": point.results["log_orthant"]["log_lower"],
                "ep_log_z": point.results["ep"]["log_z"],
                "bound": point.bound.value,
            }
        )
        if best is None or point.bound.value < best.bound.value:
            best = point
    assert best is not None
    if heldout is not None and not single:
        # the chosen point once more with its held-out estimate, as verify re-derives it
        best = certify_point(
            best.index, sample, options, heldout=heldout, device=device, timer=timer
        )
    return best, search

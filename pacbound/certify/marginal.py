"""The marginal-likelihood certificate (MATH.md §12): choose a kernel, certify it.

Q is the prior over functions (a Gaussian process with the architecture's kernel plus
``jitter``·white noise, fixed before S is seen) conditioned on fitting the n training labels:
L̂(Q) = 0 and KL(Q‖P) = −ln P(U). With a certified lower bound P̲(U) (importance sampling
with the EP Gaussian as proposal, then Markov's inequality: :mod:`pacbound.marginal`):

    L(Q) ≤ kl⁻¹(0, [−ln P̲(U) + ln(2√n/δ_PB)] / n),

with probability ≥ 1 − δ_PB − δ_IS (each divided by the size of the kernel grid σ_w × σ_b ×
jitter: a union bound over its points, the chosen one being the point of the smallest
certified bound; a point whose kernel is not positive definite gives no certificate and
still costs its share). ln P̲(U) is lowered, and the bound raised, by
:data:`REPRODUCIBILITY_MARGIN` of themselves, so that ``verify`` can compare them one-sidedly
across BLAS thread counts.

* :func:`certify_point` is the certify phase that ``certify`` and ``verify`` both run on
  one kernel (one grid point): kernel matrix, EP (an approximation, shown for information),
  the certified lower bound, the bound, the verdict and the held-out estimate;
* :func:`choose_kernel` certifies every grid point and keeps the smallest bound.

The whole computation is one dense linear-algebra job on one process; under ``torchrun``
every rank computes it (replicated, not sharded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
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

#: The relative margin every bound-side number pays inside the certificate (the certified
#: ln P(U) lower bound lowered by this fraction of its size, the bound raised by it): LAPACK's
#: rounding depends on the BLAS thread count and CPU (measured 3e-16 relative), so ``verify``
#: recomputes these numbers only to within that; it accepts a reported one at most
#: :data:`UNSAFE_SLACK` on the unsafe side of its recomputation (``MARGINAL.bound_fields``),
#: which this margin covers ten times over: every report verify accepts states numbers on the
#: safe side of the certificate verify itself computed.
REPRODUCIBILITY_MARGIN = 1e-9
#: How far (relative) a reported bound-side number may lie on the unsafe side of verify's
#: recomputation (the floating-point noise between machines), ≪ the margin.
UNSAFE_SLACK = 1e-10
#: A search record's ``failed``: why a grid point gave no certificate.
NO_FACTOR = "kernel not positive definite (Cholesky failed): no certificate, δ share spent"
#: A search record's ``failed`` when the prior's covariance overflows float64 (a huge jitter).
NO_FINITE = "constraint covariance overflows float64: no certificate, δ share spent"
#: A search record's ``failed`` when the jitter is below the kernel's float64 resolution.
NO_RESOLUTION = "jitter below the kernel's float64 resolution: no certificate, δ share spent"
#: The jitter must exceed the Cholesky's rounding, (N + 1)·ε·max A_ii per entry of the
#: constraint covariance A (N = n(C − 1) rows, A_ii = 2·K(x, x) for C ≥ 3), this many times
#: over: below it the computed factor is that of the rounded matrix, not of K + jitter·I (two
#: inputs 1e-9 apart with --jitter 1e-40 certified ln P(U) above the exact value), and a grid
#: of tiny jitters would keep the point whose rounding flatters most.
JITTER_RESOLUTION = 64.0
#: A search record's ``failed`` for any other numerical failure (EP, importance sampling).
NO_OTHER = "numerical failure: no certificate, δ share spent"
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
    with timer.phase("kernel"), np.errstate(over="ignore"):  # an Inf: _cholesky refuses it
        kernel = kernel_on(spec, options, sample.x, device)
    _check_resolution(kernel, spec.jitter, sample.classes)
    with timer.phase("ep"):
        with np.errstate(over="ignore", invalid="ignore"):
            cov = constraint_covariance(kernel, sample.labels, sample.classes)
        del kernel  # n² doubles: the held-out estimate computes its own joint kernel
        chol = _cholesky(cov, spec.jitter)
        ep = ep_orthant(cov, cholesky=chol)
    seed = derived_seed(options.seed, "importance-sampling")
    with timer.phase("importance_sampling"):
        lower = certified_log_orthant(
            cov, samples=options.is_samples, seed=seed, delta=imp.per_choice, ep=ep, cholesky=chol
        )
    log_lower = _paid(min(float(lower.log_lower), 0.0))  # P(U) ≤ 1 whatever Ẑ says
    bound = _rounded_up(marginal_bound(log_lower, n, pac.per_choice))
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
        "log_orthant": {
            **lower.to_dict(),
            "log_lower": log_lower,
            "reproducibility_margin": REPRODUCIBILITY_MARGIN,
        },
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


def _paid(log_lower: float) -> float:
    """ln P̲(U) lowered by :data:`REPRODUCIBILITY_MARGIN` of its size (still a lower bound)."""
    return log_lower - REPRODUCIBILITY_MARGIN * abs(log_lower)


def _rounded_up(bound: BoundResult) -> BoundResult:
    """The bound raised by :data:`REPRODUCIBILITY_MARGIN` of itself (at most 1: still an
    upper bound)."""
    value = min(bound.value * (1.0 + REPRODUCIBILITY_MARGIN), 1.0)
    return replace(bound, value=max(value, bound.value))


class NotPositiveDefinite(NumericalError):
    """The prior's kernel (with its jitter) is not positive definite on S: this grid point
    gives no certificate (exit 4 when no grid point gives one)."""

    record = NO_FACTOR


class Overflows(NotPositiveDefinite):
    """The prior's covariance on S overflows float64 (a huge jitter): no certificate."""

    record = NO_FINITE


def not_positive_definite(jitters: tuple[float, ...]) -> str:
    """The message of a failed Cholesky factorisation: never a value derived from S's kernel
    (a jitter chosen after seeing S would be a prior chosen after seeing S, unpaid)."""
    which = ", ".join(f"{j:g}" for j in jitters)
    every = " at every grid point" if len(jitters) > 1 else ""
    return (
        f"the prior's kernel is not positive definite after --jitter {which}{every} (its "
        "Cholesky factorisation failed). The jitter is part of the prior: a larger value "
        "chosen now, after seeing S, would make the certificate unsound; to keep it sound, "
        "pass a --jitter grid fixed in advance (e.g. --jitter 1e-6,1e-4,1e-2, each point paid "
        "in δ by the union bound)"
    )


class BelowResolution(NotPositiveDefinite):
    """The jitter is below the float64 resolution of the kernel on S: no certificate."""

    record = NO_RESOLUTION


def _check_resolution(kernel: np.ndarray, jitter: float, classes: int = 2) -> None:
    """:class:`BelowResolution` unless ``jitter`` ≥ :data:`JITTER_RESOLUTION`·(N + 1)·ε·s:
    the jitter must dominate the rounding of the factorisation (a bound on each entry of
    LLᵀ − A), or the certificate would be for the rounded matrix's Gaussian. The matrix
    factored is the constraint covariance A, N = n(C − 1) rows, its diagonal K(x, x) for
    C = 2 and 2·K(x, x) for C ≥ 3 (so s = max K(x, x), resp. 2·max K(x, x)), while the
    jitter's smallest eigenvalue in A is ``jitter`` either way. A check on S that only ever
    refuses (the point costs its δ share all the same); it needs only the kernel's diagonal,
    so it runs before the constraint covariance, EP and the importance sampling."""
    n = kernel.shape[0]
    rows, doubled = (n, 1.0) if classes == 2 else (n * (classes - 1), 2.0)
    scale = doubled * (float(np.max(np.diag(kernel))) - jitter)
    if not np.isfinite(scale):
        return  # an Inf: _cholesky refuses it as an overflow
    floor = JITTER_RESOLUTION * (rows + 1) * float(np.finfo(np.float64).eps) * max(scale, 0.0)
    if jitter < floor:
        raise BelowResolution(
            f"--jitter {jitter:g} is below the float64 resolution of the prior's kernel on S "
            f"({JITTER_RESOLUTION:g}·(N + 1)·ε times the largest constraint variance, N the "
            "number of constraints: the factorisation's rounding): "
            "the computed certificate would be for the rounded matrix, not for K + jitter·I; "
            "no certificate. The jitter is part of the prior: a value chosen now, after seeing "
            "S, would make the certificate unsound; pass a --jitter grid fixed in advance "
            "(each point paid in δ by the union bound)"
        )


def _cholesky(cov: np.ndarray, jitter: float) -> np.ndarray:
    """The lower Cholesky factor of the constraint covariance, shared by EP, the certified
    bound and the held-out draws; :class:`NotPositiveDefinite` (exit 4) when it fails, or
    when the covariance overflows float64 (a huge ``jitter``: LAPACK would factor the Inf
    into NaN, and EP would fail with a misleading message)."""
    if not np.all(np.isfinite(cov)):
        raise Overflows(
            f"the prior's constraint covariance overflows float64 at --jitter {jitter:g} (the "
            "kernel plus jitter, doubled for more than two classes, exceeds 1.8e308): no "
            "certificate; fix a smaller --jitter before seeing the data"
        )
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise NotPositiveDefinite(not_positive_definite((jitter,))) from None


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
    the choice: every point costs its δ/|grid|, also one whose kernel is not positive
    definite, which gives no certificate; exit 4 when none gives one). Returns the chosen
    point's certificate (with the held-out estimate) and the search record."""
    search: list[dict[str, Any]] = []
    best: PointCertificate | None = None
    single = options.grid_size == 1
    for index, (sigma_w, sigma_b, jitter) in enumerate(options.grid()):
        record: dict[str, Any] = {
            "grid_index": index,
            "sigma_w": sigma_w,
            "sigma_b": sigma_b,
            "jitter": jitter,
        }
        try:
            point = certify_point(
                index,
                sample,
                options,
                heldout=heldout if single else None,
                device=device,
                timer=timer,
            )
        except NumericalError as exc:  # not PD, EP not converged, Ẑ = 0: no certificate here
            if single:
                raise
            # no certificate: the trivial bound 1 (still true), its δ share spent all the same
            why = getattr(exc, "record", f"{NO_OTHER} ({exc})")
            failed = {"log_lower": None, "ep_log_z": None, "bound": 1.0, "failed": why}
            search.append({**record, **failed})
            continue
        search.append(
            {
                **record,
                "log_lower": point.results["log_orthant"]["log_lower"],
                "ep_log_z": point.results["ep"]["log_z"],
                "bound": point.bound.value,
            }
        )
        if best is None or point.bound.value < best.bound.value:
            best = point
    if best is None:
        reasons = {r["failed"] for r in search}
        if reasons == {NO_FACTOR}:
            raise NotPositiveDefinite(not_positive_definite(options.jitter))
        which = ", ".join(f"{j:g}" for j in options.jitter)
        raise NotPositiveDefinite(
            f"no certificate at every grid point of --jitter {which} ("
            + "; ".join(sorted(reasons))
            + "). The jitter is part of the prior: a value chosen now, after seeing S, would "
            "make the certificate unsound; pass a --jitter grid fixed in advance (each point "
            "paid in δ by the union bound)"
        )
    if heldout is not None and not single:
        # the chosen point once more with its held-out estimate, as verify re-derives it
        best = certify_point(
            best.index, sample, options, heldout=heldout, device=device, timer=timer
        )
    return best, search

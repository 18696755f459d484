"""Coverage experiments: does a certificate fall below the true risk more often than δ?

For r = 1..R an experiment (:class:`CoverageExperiment`; they are listed, by the
certification method they test, in :mod:`pacbound.harness.experiments`) draws a fresh
training sample (and held-out sample) from a :class:`~pacbound.harness.synthetic.TeacherTask`,
trains a small model, certifies it, and measures the true risk of *the certified classifier*
(the stochastic posterior Q for Gaussian certificates, the checkpoint for the held-out bound)
on ≥ 10⁶ fresh examples. Every pipeline variant (the correct one and the planted-bug controls
of :mod:`pacbound.harness.controls`) is scored on the same runs.

Test. A run *violates* when bound < true risk. A sound certificate violates with probability
at most δ (its total failure probability), so the number of violations V in R independent
runs is stochastically dominated by Bin(R, δ). The one-sided exact binomial test rejects
soundness when p = P[Bin(R, δ) ≥ V] < α (default α = 0.001).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

from scipy.stats import binom

#: Significance level of the coverage test: a sound pipeline fails it with probability ≤ α.
DEFAULT_ALPHA = 0.001
CORRECT = "correct"


def derive_seed(*labels: int | str) -> int:
    """A 63-bit seed from labels (SHA-256): independent streams per method, run and purpose."""
    digest = hashlib.sha256("/".join(str(v) for v in labels).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def binomial_p_value(violations: int, runs: int, delta: float) -> float:
    """P[Bin(R, δ) ≥ V]: the one-sided exact binomial test of "violation rate ≤ δ".

    >>> round(binomial_p_value(0, 100, 0.2), 12)
    1.0
    >>> binomial_p_value(60, 100, 0.2) < 1e-15
    True
    """
    return float(binom.sf(violations - 1, runs, delta))


@dataclass(frozen=True)
class RunRecord:
    """One run: the true risk of the certified classifier and each variant's bound."""

    truth: float
    bounds: dict[str, float]


@dataclass(frozen=True)
class CoverageResult:
    """Violations of one pipeline variant over R runs and the binomial test's verdict."""

    method: str  # the experiment's name
    variant: str
    runs: int
    delta: float
    violations: int
    p_value: float
    alpha: float
    max_ratio: float  # max over runs of true risk / bound
    mean_bound: float
    mean_truth: float
    seconds: float

    @property
    def sound(self) -> bool:
        """The test does not reject "violation rate ≤ δ" at level α."""
        return self.p_value >= self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "sound": self.sound}


class CoverageExperiment(Protocol):
    """A certification pipeline on a synthetic task, with its planted-bug variants."""

    name: str
    delta: float
    variants: tuple[str, ...]

    def run(self, r: int) -> RunRecord: ...


def run_coverage(
    experiment: CoverageExperiment, runs: int, *, alpha: float = DEFAULT_ALPHA
) -> dict[str, CoverageResult]:
    """R independent runs of ``experiment``; one :class:`CoverageResult` per variant."""
    start = time.perf_counter()
    records = [experiment.run(r) for r in range(runs)]
    seconds = time.perf_counter() - start
    out = {}
    for variant in experiment.variants:
        pairs = [(rec.truth, rec.bounds[variant]) for rec in records]
        violations = sum(bound < truth for truth, bound in pairs)
        out[variant] = CoverageResult(
            method=experiment.name,
            variant=variant,
            runs=runs,
            delta=experiment.delta,
            violations=violations,
            p_value=binomial_p_value(violations, runs, experiment.delta),
            alpha=alpha,
            max_ratio=max(truth / bound for truth, bound in pairs),
            mean_bound=sum(b for _, b in pairs) / runs,
            mean_truth=sum(t for t, _ in pairs) / runs,
            seconds=seconds,
        )
    return out

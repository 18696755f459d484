"""The coverage experiment of the marginal certificate: a teacher drawn from the GP itself.

Each run draws inputs, a teacher function from the GP prior (kernel + jitter) and its labels
(:func:`pacbound.marginal.teacher.sample_teacher`), certifies the random sampler Q = prior |
fits S **through the product's certify phase** (:func:`pacbound.certify.marginal.certify_point`
with the task's kernel and δ split: EP-guided certified ln P(U) at δ_IS, PAC-Bayes-kl at δ,
total δ + δ_IS), and measures Q's true risk by exact rejection sampling from the prior
(:func:`pacbound.marginal.teacher.run_teacher`, same seed, same sample). A sound certificate
falls below the truth in at most a fraction δ + δ_IS of the runs (the binomial test of
:mod:`pacbound.harness.coverage`).

Variants: ``library``, the bound :func:`run_teacher` computes with the package's functions
directly (its own importance-sampling seed); ``ep-as-bound``, the same bound with EP's
*approximation* of ln P(U) in place of the certified lower bound — what published numbers
use; reported beside the correct one (not a certificate; the test does not demand that it
fail at this small n, where EP is accurate).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pacbound.harness.coverage import CORRECT, RunRecord, derive_seed

LIBRARY = "library"
EP_AS_BOUND = "ep-as-bound"


def _default_task() -> Any:
    from pacbound.marginal.teacher import GPTeacherTask

    return GPTeacherTask()


@dataclass
class MarginalTeacherExperiment:
    """The GP-teacher runs of :mod:`pacbound.marginal.teacher` as a coverage experiment
    (the classification ``task`` of the other experiments is not used: the teacher is a GP
    draw)."""

    task: Any = None  # the harness's TeacherTask, unused
    teacher: Any = field(default_factory=_default_task)  # pacbound.marginal.teacher.GPTeacherTask
    seed: int = 0
    name: str = "marginal-gp-teacher"
    variants: tuple[str, ...] = (CORRECT, LIBRARY, EP_AS_BOUND)
    #: the certificate's total failure probability: δ (PAC-Bayes) + δ_IS
    delta: float = field(init=False)

    def __post_init__(self) -> None:
        self.delta = float(self.teacher.delta + self.teacher.delta_is)

    def options(self, r: int) -> Any:
        """The ``certify --method marginal`` options of run ``r``: the task's kernel, its
        importance-sampling draws and δ split, one grid point."""
        from pacbound.certify.marginal_options import MarginalOptions

        kernel = self.teacher.kernel
        return MarginalOptions(
            kernel=kernel.name,
            depth=kernel.depth,
            sigma_w=(kernel.sigma_w,),
            sigma_b=(kernel.sigma_b,),
            jitter=kernel.jitter,
            delta=self.delta,
            seed=derive_seed(self.name, self.seed, r, "certificate"),
            is_samples=self.teacher.is_samples,
            is_delta=self.teacher.delta_is,
        )

    def run(self, r: int) -> RunRecord:
        import numpy as np
        import torch

        from pacbound.certify.marginal import Sample, certify_point
        from pacbound.marginal import marginal_bound
        from pacbound.marginal.teacher import run_teacher, sample_teacher

        seed = derive_seed(self.name, self.seed, r)
        truth = run_teacher(self.teacher, seed)
        x, y, _, _ = sample_teacher(self.teacher, seed)
        n = self.teacher.n
        sample = Sample(torch.from_numpy(x[:n]), np.asarray(y[:n]), 2, None)
        product = certify_point(0, sample, self.options(r)).bound.value
        ep = marginal_bound(min(truth.ep_log_z, 0.0), n, self.teacher.delta).value
        return RunRecord(truth.truth, {CORRECT: product, LIBRARY: truth.bound, EP_AS_BOUND: ep})


def marginal_experiment(
    task: Any = None, *, delta: float | None = None, seed: int = 0, **_: Any
) -> MarginalTeacherExperiment:
    """The ``marginal-gp-teacher`` experiment as :func:`~pacbound.harness.experiments.
    make_experiment` builds every experiment: ``delta``, when given, is the certificate's
    total failure probability, split 4:1 between PAC-Bayes and importance sampling (the
    task's default 0.04 + 0.01); the other experiments' options (``truth_examples``) do not
    apply (Q's truth is measured by exact rejection sampling) and are ignored."""
    teacher = _default_task()
    if delta is not None:
        delta_is = delta / 5  # PAC-Bayes gets the rest, so the parts never exceed delta
        teacher = replace(teacher, delta=delta - delta_is, delta_is=delta_is)
    return MarginalTeacherExperiment(task, teacher=teacher, seed=seed)

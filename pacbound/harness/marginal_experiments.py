"""The coverage experiment of the marginal certificate: a teacher drawn from the GP itself.

Each run draws inputs, a teacher function from the GP prior (kernel + jitter) and its labels,
certifies the random sampler Q = prior | fits S with the functions ``certify --method
marginal`` runs (EP-guided certified ln P(U) at δ_IS, PAC-Bayes-kl at δ: total δ + δ_IS),
and measures
Q's true risk by exact rejection sampling from the prior
(:func:`pacbound.marginal.teacher.run_teacher`). A sound certificate falls below the truth in
at most a fraction δ + δ_IS of the runs (the binomial test of
:mod:`pacbound.harness.coverage`).

Control ``ep-as-bound``: the same bound with EP's *approximation* of ln P(U) in place of the
certified lower bound — what published numbers use; it is reported beside the correct one
(it is not a certificate, and the test does not demand that it fail at this small n, where
EP is accurate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pacbound.harness.coverage import CORRECT, RunRecord, derive_seed

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
    variants: tuple[str, ...] = (CORRECT, EP_AS_BOUND)
    #: the certificate's total failure probability: δ (PAC-Bayes) + δ_IS
    delta: float = field(init=False)

    def __post_init__(self) -> None:
        self.delta = float(self.teacher.delta + self.teacher.delta_is)

    def run(self, r: int) -> RunRecord:
        from pacbound.marginal import marginal_bound
        from pacbound.marginal.teacher import run_teacher

        run = run_teacher(self.teacher, derive_seed(self.name, self.seed, r))
        ep = marginal_bound(min(run.ep_log_z, 0.0), self.teacher.n, self.teacher.delta).value
        return RunRecord(run.truth, {CORRECT: run.bound, EP_AS_BOUND: ep})

"""The marginal certificate's coverage experiment (a teacher drawn from the GP itself)."""

from __future__ import annotations

import math

import pytest

from pacbound.harness.coverage import CORRECT, run_coverage
from pacbound.harness.experiments import experiments_by_method, make_experiment
from pacbound.harness.marginal_experiments import (
    EP_AS_BOUND,
    LIBRARY,
    MarginalTeacherExperiment,
)
from pacbound.harness.synthetic import TeacherTask

teacher = pytest.importorskip("pacbound.marginal.teacher")


def test_registered_for_the_marginal_method() -> None:
    assert experiments_by_method()["marginal"] == ("marginal-gp-teacher",)
    experiment = make_experiment("marginal-gp-teacher", TeacherTask())
    assert isinstance(experiment, MarginalTeacherExperiment)
    assert experiment.delta == pytest.approx(0.04 + 0.01)  # δ + δ_IS: the whole budget


def test_runs_certify_the_teachers_sample_through_the_product() -> None:
    """The correct variant is certify_point's bound on the teacher's training sample (the
    same sample run_teacher measures the truth on); its δ split is the teacher's."""
    task = teacher.GPTeacherTask(n=4, test_points=100, is_samples=100)
    experiment = MarginalTeacherExperiment(teacher=task, seed=7)
    results = run_coverage(experiment, 3)
    record = experiment.run(0)
    from pacbound.harness.coverage import derive_seed
    from pacbound.marginal import marginal_bound

    direct = teacher.run_teacher(task, derive_seed(experiment.name, 7, 0))
    assert record.truth == direct.truth and record.bounds[LIBRARY] == direct.bound
    ep = marginal_bound(min(direct.ep_log_z, 0.0), 4, task.delta).value
    assert record.bounds[EP_AS_BOUND] == ep
    budget = experiment.options(0).budget()
    assert budget.part("importance-sampling").delta == task.delta_is
    assert budget.part("pac-bayes").delta == pytest.approx(task.delta, abs=1e-15)
    # another importance-sampling seed than the library's: close, not equal
    assert record.bounds[CORRECT] == pytest.approx(direct.bound, abs=0.05)
    # the certified bound pays ln(1/δ_IS) more than EP's approximation would
    assert direct.log_p_u_lower <= direct.log_p_u_estimate - math.log(1 / task.delta_is)
    assert results[CORRECT].runs == 3 and results[CORRECT].violations == 0

"""The fast soundness harness (issue #7): correct pipelines pass the coverage test, every
planted bug is caught. Deterministic given the seeds; a few minutes on 2 CPUs.

Test: V violations (bound < true risk) in R runs; reject soundness when
P[Bin(R, δ) ≥ V] < α = 0.001 (one-sided exact binomial test).
"""

from __future__ import annotations

import math

import pytest
import torch

from pacbound.harness import controls
from pacbound.harness.coverage import CORRECT, CoverageResult, binomial_p_value, run_coverage
from pacbound.harness.gaussian_experiments import (
    PER_BATCH_AS_PER_EXAMPLE,
    GaussianDataExperiment,
    GaussianInitExperiment,
    MonteCarloExperiment,
    MonteCarloPerBatchExperiment,
)
from pacbound.harness.point_experiments import (
    COMPRESSORS,
    CompressionExperiment,
    HeldOutExperiment,
)
from pacbound.harness.students import model_state, pretrained
from pacbound.harness.synthetic import TeacherTask

TASK = TeacherTask()


@pytest.fixture(scope="module")
def monte_carlo() -> dict[str, CoverageResult]:
    return run_coverage(MonteCarloExperiment(TASK, delta=0.01), 1000)


@pytest.fixture(scope="module")
def gaussian_data() -> dict[str, CoverageResult]:
    return run_coverage(GaussianDataExperiment(TASK), 60)


def test_binomial_p_value_reference_values() -> None:
    # scipy.stats.binomtest(k, n, p, alternative="greater").pvalue gives the same numbers.
    assert binomial_p_value(0, 50, 0.2) == 1.0
    assert math.isclose(binomial_p_value(1, 10, 0.1), 1.0 - 0.9**10, rel_tol=1e-12)
    assert math.isclose(binomial_p_value(10, 10, 0.5), 0.5**10, rel_tol=1e-12)


def test_true_risk_matches_a_direct_noisy_label_count() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    est = TASK.true_risk(model, examples=200_000, seed=3)
    x, y = TASK.sample(200_000, torch.Generator().manual_seed(4))
    direct = float((model(x).argmax(1) != y).float().mean())
    assert abs(est.value - direct) < 5 * math.sqrt(2) * est.standard_error


def test_n_full_control_is_more_optimistic_on_the_same_run() -> None:
    record = GaussianDataExperiment(TASK).run(0)
    assert record.bounds[controls.N_FULL] < record.bounds[CORRECT]


def test_correct_reassembly_equals_the_pipeline() -> None:
    """The controls change exactly one piece: with the correct pieces they give the pipeline's
    own value (up to its outward rounding), so a caught control is caught for its bug."""
    from pacbound.certify.gaussian import certify_gaussian
    from pacbound.certify.gaussian_options import GaussianOptions

    init = pretrained(TASK, 16, 500, 0)
    x, y = TASK.sample(200, torch.Generator().manual_seed(0))
    cert = certify_gaussian(
        init, x, y, options=GaussianOptions(delta=0.2), init_state=model_state(init)
    )
    value = controls.gaussian_bound(
        cert.empirical_risk_estimate,
        draws=cert.monte_carlo.n,
        kl=cert.kl_nats,
        n=cert.n_bound,
        delta_pac_bayes=cert.budget.part("pac-bayes").per_choice,
        delta_monte_carlo=cert.budget.part("monte-carlo").delta,
    )
    assert value <= cert.value <= value + 1e-9


def test_monte_carlo_bound_is_sound(monte_carlo: dict[str, CoverageResult]) -> None:
    assert monte_carlo[CORRECT].sound, monte_carlo[CORRECT]


@pytest.mark.parametrize("control", [controls.MIDPOINT, controls.SHARED_DRAW])
def test_monte_carlo_controls_are_caught(
    monte_carlo: dict[str, CoverageResult], control: str
) -> None:
    assert not monte_carlo[control].sound, monte_carlo[control]


def test_per_batch_monte_carlo_is_sound_and_its_miscount_is_caught() -> None:
    """n/B = 10 batch means, each from one θ ~ Q: the bound counting 10 draws passes, the
    same mean counted as n = 2000 independent draws is violated far more often than δ."""
    result = run_coverage(MonteCarloPerBatchExperiment(TASK, delta=0.01), 200)
    assert result[CORRECT].sound, result[CORRECT]
    assert not result[PER_BATCH_AS_PER_EXAMPLE].sound, result[PER_BATCH_AS_PER_EXAMPLE]
    assert result[PER_BATCH_AS_PER_EXAMPLE].violations > 10  # δ·R = 2 expected if it were sound


def test_gaussian_data_prior_is_sound(gaussian_data: dict[str, CoverageResult]) -> None:
    assert gaussian_data[CORRECT].sound, gaussian_data[CORRECT]


def test_n_full_control_is_caught(gaussian_data: dict[str, CoverageResult]) -> None:
    assert not gaussian_data[controls.N_FULL].sound, gaussian_data[controls.N_FULL]


def test_gaussian_init_prior_is_sound() -> None:
    result = run_coverage(GaussianInitExperiment(TASK), 30)[CORRECT]
    assert result.sound, result


def test_heldout_bound_is_sound_and_tight() -> None:
    result = run_coverage(HeldOutExperiment(TASK), 60)[CORRECT]
    assert result.sound, result
    assert result.violations > 0  # tight: a Clopper–Pearson bound at δ = 0.2 is violated ~δ


@pytest.mark.parametrize("name", COMPRESSORS)
def test_compression_methods_are_sound(name: str) -> None:
    result = run_coverage(CompressionExperiment(TASK, kind=name), 8)[CORRECT]
    assert result.sound, result
    assert result.max_ratio < 1.0

"""The marginal-likelihood bound, the memory helpers, and the GP-teacher soundness check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pacbound.errors import InvalidInputError
from pacbound.harness.coverage import binomial_p_value
from pacbound.marginal import marginal_bound, matrix_bytes, max_n_for_memory
from pacbound.marginal.teacher import GPTeacherTask, run_teacher, sample_teacher

ALPHA = 0.001


def test_marginal_bound_is_the_kl_bound_with_zero_risk() -> None:
    for log_p, n, delta in [(-300.0, 1000, 0.04), (-2200.0, 10_000, 0.04), (-0.5, 3, 0.1)]:
        c = (-log_p + math.log(2 * math.sqrt(n) / delta)) / n
        r = marginal_bound(log_p, n, delta)
        assert r.value >= 1 - math.exp(-c)  # conservative side
        assert r.value == pytest.approx(1 - math.exp(-c), rel=1e-9)
        assert r.terms["log_p_u_lower"] == log_p and r.complexity_nats == -log_p
    assert marginal_bound(-1.0, 10, 0.05).value < marginal_bound(-2.0, 10, 0.05).value
    with pytest.raises(InvalidInputError, match="log_lower"):
        marginal_bound(0.5, 10, 0.05)
    with pytest.raises(InvalidInputError, match="log_lower"):
        marginal_bound(float("-inf"), 10, 0.05)


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_max_n_for_memory_inverts_matrix_bytes(classes: int) -> None:
    assert matrix_bytes(10_000, 2) == 8 * 5 * 10_000**2
    for budget in [0, 10**6, 16 * 2**30]:
        n = max_n_for_memory(budget, classes)
        assert n == 0 or matrix_bytes(n, classes) <= budget
        assert matrix_bytes(n + 1, classes) > budget
    with pytest.raises(InvalidInputError, match="budget"):
        max_n_for_memory(-1)


def test_teacher_truth_is_exact_for_one_training_point() -> None:
    # n = 1: Q's error at x_t is 1/2 − arcsin(s₁ s_t ρ₁ₜ)/π (bivariate orthant, closed form);
    # the run's Rao-Blackwellised truth must match its mean over the same test points.
    task = GPTeacherTask(n=1, test_points=400)
    _, y, k, _ = sample_teacher(task, 5)
    s = 2.0 * y - 1.0
    rho = k[0, 1:] / np.sqrt(k[0, 0] * np.diag(k)[1:])
    exact = float(np.mean(0.5 - np.arcsin(s[0] * s[1:] * rho) / math.pi))
    run = run_teacher(task, 5)
    assert run.truth == pytest.approx(exact, abs=0.02)
    assert run.truth_upper >= run.truth * 0.9 and run.bound > run.truth


def test_gp_teacher_coverage_over_200_seeds() -> None:
    # The harness's test: violations (bound < measured true risk of Q) ~ at most Bin(R, δ).
    # n + T is kept below 100: on a loaded machine threaded OpenBLAS Cholesky factorisations
    # of ~128-square matrices took 0.1 s each (100-square: 0.1 ms), 200 of them per test.
    task = GPTeacherTask(n=8, test_points=90, is_samples=100)  # n + T < 100: see below
    runs = [run_teacher(task, seed) for seed in range(200)]
    delta = task.delta + task.delta_is
    violations = sum(r.bound < r.truth for r in runs)
    assert binomial_p_value(violations, len(runs), delta) >= ALPHA
    truths = np.array([r.truth for r in runs])
    assert 0.02 < truths.mean() < 0.45  # a real learning problem, not a degenerate one
    assert all(r.log_p_u_lower <= r.log_p_u_estimate - math.log(1 / task.delta_is) for r in runs)


def test_import_is_torch_free() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pacbound.marginal, pacbound.marginal.teacher; "
        "assert 'torch' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr

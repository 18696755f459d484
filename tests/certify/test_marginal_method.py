"""The marginal method's certify phase (``pacbound.certify.marginal``) on real values.

* n = 2: P(U) = 1/4 + arcsin(ρ)/(2π) in closed form, with the ReLU NNGP kernel written out
  here independently; the certified ln P̲(U) is below it, within ln(1/δ_IS) plus the
  importance-sampling error; the bound is kl⁻¹(0, ·) = 1 − exp(−·) of it;
* the grid is paid by a union bound and the smallest certified bound is chosen;
* the memory budget is checked before any work and names the largest n that fits;
* the held-out estimate of Q's error agrees with rejection sampling from the prior;
* ``rederive`` on the saved kernel file gives the same results as ``run``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pacbound.certify.marginal import Sample, certify_point, choose_kernel
from pacbound.certify.marginal_heldout import HeldoutSet
from pacbound.certify.marginal_kernel import check_memory
from pacbound.certify.marginal_options import MarginalOptions
from pacbound.errors import InvalidInputError, NumericalError

pytest.importorskip("pacbound.marginal")

X2 = np.array([[1.0, 0.5, -0.2], [0.3, 1.0, 0.4]])


def _options(**changes: object) -> MarginalOptions:
    base = MarginalOptions(
        kernel="relu",
        depth=1,
        sigma_w=(1.0,),
        sigma_b=(0.1,),
        jitter=1e-6,
        delta=0.05,
        seed=0,
        is_samples=4000,
        is_delta=0.025,
        max_memory=1 << 30,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _sample(x: np.ndarray, labels: list[int], classes: int = 2) -> Sample:
    return Sample(torch.tensor(x), np.array(labels, dtype=np.int64), classes, None)


def relu_kernel_depth1(x: np.ndarray, sigma_w: float, sigma_b: float, jitter: float) -> np.ndarray:
    """One hidden ReLU layer, written out: K⁰ = σ_w² x·x'/d + σ_b², then the arc-cosine
    kernel of degree 1 (Cho & Saul 2009)."""
    k0 = sigma_w**2 * (x @ x.T) / x.shape[1] + sigma_b**2
    d = np.sqrt(np.diag(k0))
    cos = np.clip(k0 / np.outer(d, d), -1.0, 1.0)
    theta = np.arccos(cos)
    e = np.outer(d, d) * (np.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi)
    return sigma_w**2 * e + sigma_b**2 + jitter * np.eye(len(x))


@pytest.mark.parametrize("labels", [[0, 1], [1, 1]])
def test_two_examples_against_the_closed_form(labels: list[int]) -> None:
    options = _options()
    cert = certify_point(0, _sample(X2, labels), options)
    k = relu_kernel_depth1(X2, 1.0, 0.1, 1e-6)
    s = np.array([2 * y - 1 for y in labels], dtype=float)
    rho = s[0] * s[1] * k[0, 1] / math.sqrt(k[0, 0] * k[1, 1])
    exact = math.log(0.25 + math.asin(rho) / (2 * math.pi))
    res = cert.results
    lower = res["log_orthant"]
    assert abs(lower["log_estimate"] - exact) < 0.02  # 4000 draws in 2 dimensions
    assert lower["log_lower"] <= exact
    # Markov's ln(1/δ_IS), the floating-point cover, then the 1e-9 reproducibility margin
    markov = lower["log_estimate"] - math.log(1 / 0.025) - lower["margin"]
    assert lower["log_lower"] == pytest.approx(markov * (1 + 1e-9), abs=1e-13)
    assert lower["log_lower"] < markov < lower["log_lower"] * (1 - 1e-9) + 1e-15
    assert res["kl_nats"] == -lower["log_lower"]
    assert abs(res["ep"]["log_z"] - exact) < 0.05  # EP: an approximation, close at n = 2
    rhs = (res["kl_nats"] + math.log(2 * math.sqrt(2) / 0.025)) / 2
    assert res["bound"] == pytest.approx((1 - math.exp(-rhs)) * (1 + 1e-9), rel=1e-13)
    assert res["bound"] >= 1 - math.exp(-rhs)
    assert res["empirical_risk"] == {"estimate": 0.0, "upper_bound": 0.0}
    assert res["verdict"]["chance_error"] == 0.5
    assert [p["name"] for p in res["delta_budget"]["parts"]] == [
        "pac-bayes",
        "importance-sampling",
    ]
    assert res["gap_nats"] == pytest.approx(res["ep"]["log_z"] - lower["log_lower"])


def test_a_grid_is_paid_by_a_union_bound_and_the_best_point_kept() -> None:
    options = _options(sigma_w=(0.5, 2.0), sigma_b=(0.0, 1.0), is_samples=500)
    x = np.random.default_rng(0).normal(size=(6, 4))
    sample = _sample(x, [0, 1, 1, 0, 1, 0])
    best, search = choose_kernel(sample, options)
    assert [(p["sigma_w"], p["sigma_b"], p["jitter"]) for p in search] == list(options.grid())
    assert best.bound.value == min(p["bound"] for p in search)
    for part in best.results["delta_budget"]["parts"]:
        assert part["grid_size"] == 4 and part["per_choice"] == part["delta"] / 4
    assert best.results["log_orthant"]["delta"] == best.budget.part("importance-sampling").delta / 4
    # each point is what certify_point gives on its own (verify re-derives the chosen one)
    again = certify_point(best.index, sample, options)
    assert again.results == best.results


def test_memory_is_refused_before_any_work_naming_the_largest_n() -> None:
    from pacbound.marginal import matrix_bytes, max_n_for_memory

    budget = matrix_bytes(300, 2)
    check_memory(300, 2, budget)  # fits
    largest = max_n_for_memory(budget, 2)
    assert largest >= 300 and matrix_bytes(largest + 1, 2) > budget
    with pytest.raises(InvalidInputError, match=rf"largest n that fits is {largest}\b") as e:
        check_memory(largest + 1, 2, budget)
    assert e.value.param == "--max-memory"
    multi = max_n_for_memory(budget, 10)  # n(C − 1) constraints: far fewer examples fit
    assert multi < largest
    with pytest.raises(InvalidInputError, match=rf"10 classes.*largest n that fits is {multi}\b"):
        check_memory(multi + 1, 10, budget)


def test_multiclass_uses_n_times_c_minus_1_constraints() -> None:
    x = np.random.default_rng(1).normal(size=(5, 3))
    cert = certify_point(0, _sample(x, [0, 1, 2, 1, 0], classes=3), _options(is_samples=300))
    assert cert.results["labels"]["constraints"] == 10
    assert cert.results["labels"]["counts"] == [2, 2, 1]
    assert cert.results["verdict"]["chance_error"] == pytest.approx(2 / 3)


def test_singular_kernel_is_a_numerical_error() -> None:
    x = np.array([[1.0, 0.0], [1.0, 1e-13], [0.0, 1.0]])
    with pytest.raises(NumericalError):
        certify_point(0, _sample(x, [0, 1, 1]), _options(jitter=1e-300, is_samples=10))


def test_heldout_estimate_against_rejection_sampling_from_the_prior() -> None:
    """Q's error at test inputs = E[error | f fits S] under the prior: draw (f_train,
    f_test) jointly from the GP, keep the draws that fit S, average the test errors."""
    rng = np.random.default_rng(3)
    x, xt = rng.normal(size=(4, 3)), rng.normal(size=(6, 3))
    labels, test_labels = [0, 1, 1, 0], np.array([1, 0, 1, 1, 0, 0])
    options = _options(is_samples=20000)
    heldout = HeldoutSet(torch.tensor(xt), test_labels, checkpoint_error=0.25)
    cert = certify_point(0, _sample(x, labels), options, heldout=heldout)
    block = cert.results["heldout"]
    k = relu_kernel_depth1(np.vstack([x, xt]), 1.0, 0.1, 1e-6)
    f = rng.multivariate_normal(np.zeros(10), k, size=400_000)
    s = np.array([2 * y - 1 for y in labels])
    kept = f[np.all(f[:, :4] * s > 0, axis=1), 4:]
    t = 2 * test_labels - 1
    truth = float(np.mean(kept * t < 0))
    stderr = math.sqrt(truth * (1 - truth) / (len(kept) * 6))
    assert abs(block["q_error_estimate"] - truth) < 4 * stderr + 0.01
    assert block["examples"] == 6 and block["checkpoint_error"] == 0.25
    assert "not a bound" in block["note"]

"""Adversarial review of the four marginal-certificate fixes (issue 15, MATH.md §12).

The fixes under attack: C fixed before S (``--num-classes``); ``--jitter`` as a grid paid by
the union bound (a failed point still costs its share); verify's one-sided comparison of the
bound-side leaves, covered by a 1e-9 margin paid inside the certificate; the held-out estimate
of Q's error for C > 2. Truths are computed independently here: mpmath at 50-80 digits for the
bound and the bivariate orthant probability (Sheppard's closed form), exact fractions for the
δ budget, rejection sampling from C independent GPs for the held-out error. Attacks that found
an unfixed hole are ``xfail(strict=True, reason="hole: …")``.
"""

from __future__ import annotations

import json
import math
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import mpmath as mp
import numpy as np
import pytest
import torch

from pacbound.certify.marginal import (
    NO_FINITE,
    REPRODUCIBILITY_MARGIN,
    Overflows,
    Sample,
    certify_point,
    choose_kernel,
)
from pacbound.certify.marginal_heldout import HeldoutSet
from pacbound.certify.marginal_kernel import joint_kernel, kernel_spec
from pacbound.errors import NumericalError
from tests.review._marginal import run_cli as _run
from tests.review._marginal import small_options as _options
from tests.review._marginal import verify_forged

BASE = ("certify", "--method", "marginal", "--kernel-depth", "1", "--is-samples", "60")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An honest report: n = 8, a σ_w × jitter grid of 4 points, its kernel file beside it."""
    root = tmp_path_factory.mktemp("marginal_fixes")
    rng = np.random.default_rng(3)
    np.savez(root / "d.npz", x=rng.normal(size=(8, 3)), y=np.array([0, 1, 1, 0, 1, 0, 0, 1]))
    code, _, err = _run(
        *BASE, "--data", str(root / "d.npz"), "--num-classes", "2", "--jitter", "1e-6,1e-4",
        "--sigma-w", "1,2", "--quiet", "--output", str(root / "r.json"), "--save-kernel",
        str(root / "k.json"),
    )  # fmt: skip
    assert code == 0, err
    return root / "r.json"


def _forged(report: Path, path: tuple[str | int, ...], factor: float) -> int:
    """verify's exit code with one results leaf multiplied by ``factor``."""
    return verify_forged(report, path, lambda value: value * factor)


# ----------------------------------------------------------------------------------------
# Fix 3: verify's one-sided comparison (what held)


@pytest.mark.parametrize(
    ("path", "unsafe"),
    [
        (("bound",), 1 - 2e-10),  # a bound reported lower
        (("certificate_terms", "value"), 1 - 2e-10),
        (("kl_nats",), 1 - 2e-10),
        (("log_orthant", "log_lower"), 1 - 2e-10),  # negative: ×(1 − ε) is higher
        (("certificate_terms", "terms", "log_p_u_lower"), 1 - 2e-10),
    ],
)
def test_verify_refuses_a_bound_side_leaf_forged_2e10_unsafe(
    report: Path, path: tuple[str, ...], unsafe: float
) -> None:
    assert _run("verify", str(report))[0] == 0
    assert _forged(report, path, unsafe) == 1


def test_the_margin_is_in_the_recorded_numbers(report: Path) -> None:
    """The reported bound ≥ kl⁻¹(0, ·) of the recorded ln P̲(U) at 50 digits, by ≈ 1e-9; the
    recorded ln P̲(U) ≤ ln Ẑ − ln(1/δ_IS) by ≈ 1e-9 of itself."""
    mp.mp.dps = 50
    res = json.loads(report.read_text())["results"]
    parts = {p["name"]: p for p in res["delta_budget"]["parts"]}
    n, lower = res["n"], res["log_orthant"]["log_lower"]
    raw = mp.mpf(res["log_orthant"]["log_estimate"]) + mp.log(
        mp.mpf(parts["importance-sampling"]["per_choice"])
    )
    assert (raw - lower) / abs(raw) > 0.99 * REPRODUCIBILITY_MARGIN
    c = (-mp.mpf(lower) + mp.log(2 * mp.sqrt(n) / mp.mpf(parts["pac-bayes"]["per_choice"]))) / n
    exact = 1 - mp.exp(-c)
    assert (mp.mpf(res["bound"]) - exact) / exact > 0.99 * REPRODUCIBILITY_MARGIN


# ----------------------------------------------------------------------------------------
# Fix 3: leaves outside ``bound_fields`` keep the symmetric 1e-9 (hole)


@pytest.mark.parametrize(
    "path",
    [
        ("delta_budget", "total"),
        ("delta_budget", "parts", 0, "delta"),
        ("delta_budget", "parts", 1, "per_choice"),
        ("certificate_terms", "delta"),
        ("log_orthant", "delta"),
        ("certificate_terms", "terms", "log_term"),
        ("certificate_terms", "terms", "rhs"),
    ],
)
def test_verify_refuses_a_delta_leaf_forged_2e10_unsafe(
    report: Path, path: tuple[str | int, ...]
) -> None:
    assert _forged(report, path, 1 - 2e-10) == 1


# ----------------------------------------------------------------------------------------
# Fix 2: the jitter grid's δ split


def test_a_seven_point_jitter_grid_never_spends_more_than_delta() -> None:
    jitters = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
    budget = _options(jitter=jitters).budget()
    assert _options(jitter=jitters).grid_size == 7
    spent = sum(Fraction(p.per_choice) * p.grid_size for p in budget.parts)
    assert spent <= Fraction(budget.total)


def test_a_huge_jitter_is_a_failed_grid_point_not_a_misleading_ep_error() -> None:
    """Fixed: C = 3 doubles the covariance's diagonal; a jitter of 1e308 overflowed to Inf,
    LAPACK factored it into NaN and EP failed ("did not converge ... lower the damping") with
    RuntimeWarnings, aborting the whole grid. Now the point fails (its δ share spent) and a
    lone such jitter is exit 4 with one line naming --jitter."""
    rng = np.random.default_rng(1)
    sample = Sample(torch.tensor(rng.normal(size=(6, 3))), np.array([0, 1, 2, 0, 1, 2]), 3, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        best, search = choose_kernel(sample, _options(jitter=(1e-2, 1e308), num_classes=3))
        assert best.index == 0 and search[1]["failed"] == NO_FINITE and search[1]["bound"] == 1.0
        assert all(p["grid_size"] == 2 for p in best.results["delta_budget"]["parts"])
        with pytest.raises(Overflows, match=r"overflows float64 at --jitter 1e\+308") as caught:
            choose_kernel(sample, _options(jitter=(1e308,), num_classes=3))
    assert isinstance(caught.value, NumericalError)  # exit 4


# ----------------------------------------------------------------------------------------
# The jitter is part of the prior: one below float64's resolution of the kernel (hole)

#: Two inputs 1.1e-9 apart, opposite labels; with jitter 1e-40 the float64 kernel's rounding
#: (1 + ρ ≈ 2.2e-16) replaces the true geometry (1 + ρ = 4.2e-20) and LAPACK's Cholesky
#: happens to succeed (one pair in 400 random ones does).
NEAR = np.array(
    [
        [-1.4192520017477464, 0.5450543963499954, -1.959881624692813],
        [-1.419252002499472, 0.5450543959843493, -1.95988162603812],
    ]
)


def _exact_log_orthant(x: np.ndarray, jitter: float, sigma_b: float) -> Any:
    """ln P(U) for the depth-0 kernel σ_b² + x·x'/d (+ jitter) and labels (0, 1): Sheppard's
    1/4 + arcsin(c)/(2π) with c = −ρ, at 80 digits."""
    mp.mp.dps = 80
    rows = [[mp.mpf(float(v)) for v in row] for row in x]

    def k(a: list[Any], b: list[Any]) -> Any:
        return mp.fsum(p * q for p, q in zip(a, b, strict=True)) / len(a) + mp.mpf(sigma_b) ** 2

    eps = mp.mpf(jitter)
    c = -k(rows[0], rows[1]) / mp.sqrt((k(rows[0], rows[0]) + eps) * (k(rows[1], rows[1]) + eps))
    return mp.log(mp.mpf(1) / 4 + mp.asin(c) / (2 * mp.pi))


def test_a_jitter_below_float_resolution_never_certifies_above_the_exact_ln_p_u() -> None:
    exact = _exact_log_orthant(NEAR, 1e-40, 0.1)
    assert float(exact) == pytest.approx(-23.7966, abs=1e-3)
    options = _options(depth=0, jitter=(1e-40,))
    try:
        point = certify_point(0, Sample(torch.tensor(NEAR), np.array([0, 1]), 2, None), options)
    except NumericalError as exc:
        if "its Cholesky factorisation failed" in str(exc):
            pytest.skip("this BLAS's rounding made the Cholesky fail: hole not shown here")
        return  # refused by a check of the jitter: no certificate is a true certificate
    assert point.results["log_orthant"]["log_lower"] <= exact


def test_the_exact_orthant_helper_matches_float64_where_the_jitter_dominates() -> None:
    """The 80-digit helper against a well-separated pair (jitter 1e-2): both agree, and the
    certificate's lower bound is below it (the attack above is a rounding effect, not the
    helper's)."""
    x = np.array([[1.0, 0.0, 0.5], [0.2, 1.0, -0.3]])
    exact = _exact_log_orthant(x, 1e-2, 0.1)
    k = 0.01 + x @ x.T / 3 + 1e-2 * np.eye(2)
    c = -k[0, 1] / math.sqrt(k[0, 0] * k[1, 1])
    assert float(exact) == pytest.approx(math.log(0.25 + math.asin(c) / (2 * math.pi)), rel=1e-12)
    options = _options(depth=0, jitter=(1e-2,))
    point = certify_point(0, Sample(torch.tensor(x), np.array([0, 1]), 2, None), options)
    assert point.results["log_orthant"]["log_lower"] <= exact


# ----------------------------------------------------------------------------------------
# Fix 4: the held-out estimate for C > 2 against rejection sampling (what held)


def test_multiclass_heldout_estimate_matches_rejection_sampling() -> None:
    """n = 3, C = 3, m = 5: draw C independent GPs on the n + m inputs (the certificate's
    joint kernel), keep those whose argmax fits S, count test errors; the certificate's
    estimate agrees within 4 standard errors of both estimates."""
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(3, 2)), rng.normal(size=(5, 2))
    labels, test = rng.integers(0, 3, size=3), rng.integers(0, 3, size=5)
    options = _options(num_classes=3, is_samples=4000)
    sample = Sample(torch.tensor(x), labels, 3, None)
    point = certify_point(0, sample, options, heldout=HeldoutSet(torch.tensor(t), test))
    estimate = point.results["heldout"]["q_error_estimate"]
    spec = kernel_spec(options, 0, 3)
    joint = joint_kernel(spec, options, torch.tensor(x), torch.tensor(t), torch.device("cpu"))
    factor = np.linalg.cholesky(joint)
    draws = np.random.default_rng(1).normal(size=(8, 3, 300_000))
    f = np.einsum("ij,jcd->icd", factor, draws)
    fits = (f[:3].argmax(axis=1) == labels[:, None]).all(axis=0)
    errors = (f[3:, :, fits].argmax(axis=1) != test[:, None]).mean(axis=0)
    brute, se = errors.mean(), errors.std() / math.sqrt(errors.size)
    assert fits.sum() > 5000
    assert abs(estimate - brute) < 4 * math.hypot(se, errors.std() / math.sqrt(4000))


# ----------------------------------------------------------------------------------------
# Fix 1: C fixed before S (what held), and the CLI names --jitter


def test_heldout_labels_at_or_above_c_are_refused_and_c_comes_from_the_map(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(6, 3)), y=np.array([0, 1, 2, 0, 1, 2]))
    np.savez(tmp_path / "h.npz", x=rng.normal(size=(3, 3)), y=np.array([0, 1, 3]))
    code, out, err = _run(
        *BASE, "--data", str(tmp_path / "d.npz"), "--num-classes", "3", "--heldout",
        str(tmp_path / "h.npz"), "--quiet",
    )  # fmt: skip
    assert code == 3 and out == "" and err.count("\n") == 1
    assert err.startswith("Error: --heldout") and "label 3, outside 0..2" in err
    # a map with a gap (target 1 unused): C = 3 from the map's targets, not the labels' 2
    code, out, err = _run(
        *BASE, "--data", str(tmp_path / "d.npz"), "--label-map", "0:0,1-2:2", "--json",
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)["results"]
    assert res["labels"]["classes"] == 3 and res["labels"]["counts"] == [2, 0, 4]


def test_cli_help_and_errors_name_jitter_not_an_internal_name(tmp_path: Path) -> None:
    code, out, _ = _run("certify", "--help")
    assert code == 0 and "--jitter J|J1,J2" in out and "--jitters" not in out
    np.savez(tmp_path / "d.npz", x=np.eye(3), y=np.array([0, 1, 0]))
    for bad, message in (
        ("0", "--jitter must be > 0"),
        ("1e-6,,1e-4", "--jitter '1e-6,,1e-4': give a number"),
        ("1e-6,1e-06", "--jitter lists a value twice"),
    ):
        code, out, err = _run(
            *BASE, "--data", str(tmp_path / "d.npz"), "--num-classes", "2", "--jitter", bad
        )
        assert code == 3 and out == "" and err == f"Error: {err[7:]}" and message in err, err
        assert err.count("\n") == 1 and "--jitters" not in err

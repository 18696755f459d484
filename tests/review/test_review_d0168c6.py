"""Adversarial review of d0168c6 (δ/G rounded down, the marginal jitter floor, verify's
bit-for-bit leaves).

Truths computed independently: exact fractions for the δ shares, mpmath at 80 digits for the
bivariate orthant probability (Sheppard's closed form), the float64 Cholesky backward-error
bound for the jitter floor. Forgeries go through the real ``pacbound verify`` on a freshly
certified report, the results hash recomputed as a forger would.
"""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pacbound.marginal as marginal_pkg
from pacbound.bounds.budget import DeltaPart
from pacbound.certify.marginal import (
    JITTER_RESOLUTION,
    NO_OTHER,
    BelowResolution,
    Sample,
    certify_point,
    choose_kernel,
)
from pacbound.certify.marginal_kernel import kernel_on, kernel_spec
from pacbound.certify.marginal_method import MARGINAL
from pacbound.certify.marginal_options import MarginalOptions
from pacbound.errors import NumericalError
from pacbound.verify.engine import tolerances
from pacbound.verify.fields import compare_results, leaves
from tests.review._marginal import leaf, verify_forged
from tests.review._marginal import run_cli as _run
from tests.review._marginal import small_options as _options
from tests.review.test_review_marginal_fixes import NEAR, _exact_log_orthant

EPS = float(np.finfo(np.float64).eps)


# ----------------------------------------------------------------------------------------
# 1. DeltaPart.per_choice rounded down (what held)


def _deltas() -> list[float]:
    rng = random.Random(0)
    fixed = [0.05, 0.1, 0.025, 0.04, 0.01, 1e-3, 0.999999, 1e-300, 0.07842546823972447]
    return (
        fixed + [rng.random() for _ in range(300)] + [10 ** rng.uniform(-12, 0) for _ in range(300)]
    )


def _grids() -> list[int]:
    rng = random.Random(1)
    return [*range(1, 64), 100, 6001, 10**6, *(rng.randrange(2, 10**7) for _ in range(20))]


def test_per_choice_is_the_largest_float_whose_g_shares_fit_in_delta() -> None:
    """For 609 δ × 103 G: G·per_choice ≤ δ exactly, and the next float up would exceed it
    (rounded down by exactly one step at most: never wasteful beyond one ulp)."""
    above_nearest = 0
    for delta in _deltas():
        for g in _grids():
            share = DeltaPart("p", delta, g).per_choice
            assert share > 0.0
            assert Fraction(share) * g <= Fraction(delta), (delta, g)
            assert Fraction(math.nextafter(share, math.inf)) * g > Fraction(delta), (delta, g)
            above_nearest += Fraction(delta / g) * g > Fraction(delta)
    assert above_nearest > 1000  # plain δ/G would have overspent in this many cases


def test_every_marginal_grid_budget_spends_at_most_delta() -> None:
    rng = random.Random(2)
    for _ in range(300):
        delta = rng.uniform(1e-4, 0.5)
        jitters = tuple(10.0**-k for k in range(1, rng.randrange(2, 9)))
        sigmas = tuple(1.0 + k for k in range(rng.randrange(1, 6)))
        options = _options(delta=delta, is_delta=delta * rng.uniform(0.01, 0.99),
                           jitter=jitters, sigma_w=sigmas)  # fmt: skip
        budget = options.budget()
        spent = sum(Fraction(p.per_choice) * p.grid_size for p in budget.parts)
        assert spent <= Fraction(budget.total)


def test_certified_marginal_terms_use_the_rounded_down_share() -> None:
    """Nothing downstream re-divides δ: the certificate's δ and ln(2√n/δ) are the ones of
    DeltaPart.per_choice (G = 7, where plain δ_PB/7 is one ulp above it)."""
    jitters = (1e-6, 2e-6, 3e-6, 4e-6, 5e-6, 6e-6, 7e-6)
    options = _options(jitter=jitters)
    pac = options.budget().part("pac-bayes")
    assert pac.delta / 7 != pac.per_choice  # the case the fix is about
    rng = np.random.default_rng(4)
    sample = Sample(torch.tensor(rng.normal(size=(5, 3))), np.array([0, 1, 0, 1, 1]), 2, None)
    res = certify_point(0, sample, options).results
    assert res["certificate_terms"]["delta"] == pac.per_choice
    assert res["log_orthant"]["delta"] == options.budget().part("importance-sampling").per_choice
    log_term = res["certificate_terms"]["terms"]["log_term"]
    assert log_term >= math.log(2 * math.sqrt(5) / pac.per_choice) * (1 - 1e-15)


# ----------------------------------------------------------------------------------------
# 2. The jitter floor


def _floor(x: np.ndarray, options: MarginalOptions, rows: int, scale: float = 1.0) -> float:
    k = kernel_on(kernel_spec(options, 0, 2), options, torch.tensor(x), torch.device("cpu"))
    return JITTER_RESOLUTION * (rows + 1) * EPS * scale * (float(np.diag(k).max()) - 1e-6)


def test_near_duplicates_just_above_the_floor_never_certify_above_the_exact_value() -> None:
    """Depth 0, two inputs 1.1e-9 apart with opposite labels (Sheppard's formula is exact):
    from 1× to 1000× the floor EP refuses (exit 4: no certificate is a true one); from
    10⁴× it certifies, 3.7 nats below the exact ln P(U) (the estimate within 2.3e-3 nats)."""
    base = _options(depth=0)
    floor = _floor(NEAR, base, 2)
    sample = Sample(torch.tensor(NEAR), np.array([0, 1]), 2, None)
    for mult in (1.001, 10.0, 1000.0):
        with pytest.raises(NumericalError):
            certify_point(0, sample, _options(depth=0, jitter=(floor * mult,)))
    for mult, seed in ((1e4, 0), (1e4, 1), (1e5, 2)):
        jitter = floor * mult
        exact = float(_exact_log_orthant(NEAR, jitter, 0.1))
        res = certify_point(0, sample, _options(depth=0, jitter=(jitter,), seed=seed)).results
        assert res["log_orthant"]["log_lower"] < exact - 3.0
        assert abs(res["log_orthant"]["log_estimate"] - exact) < 2e-2  # 200 IS draws


def test_one_grid_point_whose_ep_fails_does_not_abort_the_grid() -> None:
    sample = Sample(torch.tensor(NEAR), np.array([0, 1]), 2, None)
    certify_point(0, sample, _options(depth=0, jitter=(1e-6,)))  # certifies alone
    best, search = choose_kernel(sample, _options(depth=0, jitter=(1e-12, 1e-6)))
    assert best.index == 1 and search[0]["bound"] == 1.0
    assert search[0]["failed"].startswith(NO_OTHER) and "EP did not converge" in search[0]["failed"]
    assert all(p["grid_size"] == 2 for p in best.results["delta_budget"]["parts"])


def test_a_jitter_below_the_floor_is_refused_before_any_ep_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise AssertionError("expensive work ran before the floor check")

    monkeypatch.setattr(marginal_pkg, "constraint_covariance", boom)
    monkeypatch.setattr(marginal_pkg, "ep_orthant", boom)
    sample = Sample(torch.tensor(NEAR), np.array([0, 1]), 2, None)
    with pytest.raises(BelowResolution):
        certify_point(0, sample, _options(depth=0, jitter=(1e-15,)))


def test_the_floor_is_the_constraint_covariances_for_many_classes() -> None:
    """Fixed here: C ≥ 3 factors A with N = n(C − 1) rows and diagonal 2·K(x, x), while the
    jitter's smallest eigenvalue in A stays ``jitter``; d0168c6's floor used n and max K, so
    at C = 100 (n = 2) a jitter 1.5× that floor, below A's own per-entry rounding bound
    (N + 1)·ε·max A_ii (the criterion the docstring states, without the 64× safety), was
    certified. Now the floor is 64·(N + 1)·ε·max A_ii: for C = 2 the same as before."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3))
    classes, rows = 100, 2 * 99
    old, new = _floor(x, _options(), 2), _floor(x, _options(), rows, scale=2.0)
    rounding = new / JITTER_RESOLUTION  # (N + 1)·ε·max A_ii
    between = 1.5 * old
    assert old < between < rounding < new
    sample = Sample(torch.tensor(x), np.array([0, 57]), classes, None)
    with pytest.raises(BelowResolution):
        certify_point(0, sample, _options(num_classes=classes, jitter=(between,)))
    # C = 3 (N = 4, diagonal 2K): refused just below its floor, certified just above
    three = Sample(torch.tensor(x), np.array([0, 2]), 3, None)
    floor3 = _floor(x, _options(), 4, scale=2.0)
    with pytest.raises(BelowResolution):
        certify_point(0, three, _options(num_classes=3, jitter=(0.99 * floor3,)))
    options = _options(num_classes=3, jitter=(1.01 * floor3,), is_samples=50)
    assert certify_point(0, three, options).results["log_orthant"]["log_lower"] < 0.0
    # C = 2: unchanged, refused just below 64·(n + 1)·ε·max K, certified above
    two = Sample(torch.tensor(x), np.array([0, 1]), 2, None)
    with pytest.raises(BelowResolution):
        certify_point(0, two, _options(jitter=(0.99 * old,)))
    best, search = choose_kernel(two, _options(jitter=(0.99 * old, 1.01 * old)))
    assert search[0]["failed"] and best.index == 1


def test_the_floor_scales_with_the_largest_variance_not_the_smallest() -> None:
    """A kernel with a 1e12 dynamic range across inputs: the floor is set by max K(x, x)
    (the Cholesky's per-entry rounding bound |ΔA_ij| ≤ γ·√(A_ii A_jj) ≤ γ·max A_ii), so a
    jitter fine for the small inputs but below the large one's rounding is refused."""
    x = np.array([[1e-6, 0.0, 0.0], [0.0, 1e-6, 0.0], [1e3, 2e2, -5e2]])
    options = _options(depth=0, sigma_b=(0.0,))
    k = kernel_on(kernel_spec(options, 0, 2), options, torch.tensor(x), torch.device("cpu"))
    big = float(np.diag(k).max())
    assert big / float((np.diag(k) - 1e-6).min()) > 1e12
    jitter = 0.5 * JITTER_RESOLUTION * 4 * EPS * big
    sample = Sample(torch.tensor(x), np.array([0, 1, 0]), 2, None)
    with pytest.raises(BelowResolution):
        certify_point(0, sample, _options(depth=0, sigma_b=(0.0,), jitter=(jitter,)))


# ----------------------------------------------------------------------------------------
# 3. verify: bit-for-bit leaves


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An honest report: n = 8, a 7-point jitter grid (δ/7 is where rounding down bites)."""
    root = tmp_path_factory.mktemp("d0168c6")
    rng = np.random.default_rng(3)
    np.savez(root / "d.npz", x=rng.normal(size=(8, 3)), y=np.array([0, 1, 1, 0, 1, 0, 0, 1]))
    code, _, err = _run(
        "certify", "--method", "marginal", "--kernel-depth", "1", "--is-samples", "60",
        "--data", str(root / "d.npz"), "--num-classes", "2", "--jitter",
        "1e-6,2e-6,3e-6,4e-6,5e-6,6e-6,7e-6", "--quiet", "--output", str(root / "r.json"),
        "--save-kernel", str(root / "k.json"),
    )  # fmt: skip
    assert code == 0, err
    return root / "r.json"


def _forge(report: Path, path: tuple[str | int, ...], value: Any) -> int:
    return verify_forged(report, path, lambda _: value)


EXACT = [
    ("delta_budget", "total"),
    ("delta_budget", "parts", 0, "delta"),
    ("delta_budget", "parts", 0, "per_choice"),
    ("delta_budget", "parts", 1, "delta"),
    ("delta_budget", "parts", 1, "per_choice"),
    ("certificate_terms", "delta"),
    ("certificate_terms", "terms", "log_term"),
    ("log_orthant", "delta"),
    # LAPACK-free leaves that kept the symmetric 1e-9 in d0168c6 (made exact here)
    ("kernel", "jitter"),
    ("kernel", "sigma_w"),
    ("verdict", "chance_error"),
    ("log_orthant", "reproducibility_margin"),
]


@pytest.mark.parametrize("path", EXACT, ids=lambda p: ".".join(map(str, p)))
def test_an_exact_leaf_forged_one_ulp_or_2e10_either_way_is_refused(
    report: Path, path: tuple[str | int, ...]
) -> None:
    honest = leaf(json.loads(report.read_text())["results"], path)
    assert type(honest) is float and honest > 0.0
    forgeries = (
        math.nextafter(honest, math.inf),
        math.nextafter(honest, -math.inf),
        honest * (1 + 2e-10),
        honest * (1 - 2e-10),
    )
    assert [_forge(report, path, v) for v in forgeries] == [1, 1, 1, 1]


def test_the_kl_right_hand_side_is_one_sided(report: Path) -> None:
    path = ("certificate_terms", "terms", "rhs")
    rhs = leaf(json.loads(report.read_text())["results"], path)
    assert _run("verify", str(report))[0] == 0
    assert _forge(report, path, rhs * (1 - 2e-10)) == 1  # lower: unsafe
    assert _forge(report, path, rhs * (1 + 2e-10)) == 0  # higher: safe, within 1e-9
    assert _forge(report, path, math.nextafter(rhs, -math.inf)) == 0  # within the 1e-10 slack


def test_no_float_leaf_free_of_lapack_keeps_the_symmetric_tolerance(report: Path) -> None:
    """Every float leaf of the results that gets the symmetric 1e-9 is a LAPACK-dependent
    number (EP, the importance weights, the held-out draws) or the search record."""
    res = json.loads(report.read_text())["results"]
    checks = compare_results(res, res, skip=tuple(MARGINAL.choice_fields), **tolerances(MARGINAL))
    symmetric = {c.field for c in checks if type(c.reported) is float and c.side is None}
    assert symmetric == {
        "ep.log_z",
        "ep.approximate_bound",
        "log_orthant.log_estimate",
        "log_orthant.log_weight_mean",
        "log_orthant.log_weight_std",
        "log_orthant.effective_sample_size",
        "log_orthant.margin",
        "gap_nats",
    }
    assert all(type(v) is not float for p, v in leaves(res["labels"]))

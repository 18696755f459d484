"""Adversarial review of the marginal-likelihood certificate (issue 15, MATH.md §12).

Each test is one attack on the invariant "a certificate is TRUE": the certified ln P̲(U) is
below the exact ln P(U) (or the run ends with exit 3/4, never a garbage number), every use of
the data is paid in δ, bounds are rounded up, verify refuses forged reports. Truths are
computed independently here: Sheppard/Plackett orthant closed forms, mpmath at 60 digits,
brute-force sampling of the argmax of C GPs. Attacks that found a hole are marked
``xfail(strict=True, reason="hole: …")`` (the patch or the open point is in the review notes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pacbound.certify.marginal import Sample, certify_point
from pacbound.certify.marginal_kernel import joint_kernel, kernel_on, kernel_spec
from pacbound.errors import InvalidInputError, NumericalError
from pacbound.harness.coverage import binomial_p_value
from pacbound.marginal import (
    certified_log_orthant,
    constraint_covariance,
    ep_orthant,
    marginal_bound,
)
from pacbound.marginal.teacher import GPTeacherTask, run_teacher, sample_teacher
from pacbound.report.document import results_hash
from tests.review._marginal import run_cli as _run
from tests.review._marginal import small_options as _options

ALPHA = 0.001  # the harness's significance level


def _log_orthant_3(c: np.ndarray) -> float:
    """ln P(g > 0), g ~ N(0, c), n ≤ 3, in closed form (Sheppard 1899; Plackett 1954)."""
    d = np.sqrt(np.diag(c))
    r = c / np.outer(d, d)
    if c.shape[0] == 1:
        return math.log(0.5)
    if c.shape[0] == 2:
        return math.log(0.25 + math.asin(r[0, 1]) / (2 * math.pi))
    s = math.asin(r[0, 1]) + math.asin(r[0, 2]) + math.asin(r[1, 2])
    return math.log(0.125 + s / (4 * math.pi))


# --- the estimator: unbiased for every proposal, Markov in the right direction ---------------


def test_guided_estimate_is_unbiased_on_a_permuted_block_covariance() -> None:
    """n = 6: two independent 3-blocks with strong negative correlations, interleaved by a
    permutation, so P(U) is the product of two Plackett closed forms while the sequential
    sampler sees a general 6 × 6 matrix. The mean of Ẑ over 300 seeds (S = 1 and S = 3
    draws each: the weight itself must be unbiased, not only the average) matches P(U)."""
    a = np.array([[1.0, -0.6, -0.55], [-0.6, 1.0, -0.3], [-0.55, -0.3, 1.0]])
    b = 2.5 * np.array([[1.0, 0.8, -0.7], [0.8, 1.0, -0.4], [-0.7, -0.4, 1.0]])
    block = np.zeros((6, 6))
    block[:3, :3], block[3:, 3:] = a, b
    perm = np.array([3, 0, 4, 1, 5, 2])
    c = block[np.ix_(perm, perm)]
    exact = math.exp(_log_orthant_3(a) + _log_orthant_3(b))
    ep = ep_orthant(c)
    for samples in (1, 3):
        z = np.array(
            [
                math.exp(
                    certified_log_orthant(c, samples=samples, seed=s, delta=0.5, ep=ep).log_estimate
                )
                for s in range(300)
            ]
        )
        se = z.std(ddof=1) / math.sqrt(z.size)
        assert abs(z.mean() - exact) <= 4 * se, (samples, z.mean(), exact, se)
    assert 1e-4 < exact < 1e-3  # a small orthant (3.3e-4): the test has teeth


def test_certified_ln_p_u_covers_the_exact_value_on_gp_teacher_draws_with_power() -> None:
    """The GP teacher's own covariances (n = 3, so ln P(U) is exact): over 200 teachers the
    certified lower bound exceeds the truth at most as often as Bin(200, δ_IS) allows, while
    the same check rejects the estimate without Markov's ln(1/δ_IS) (the check has power,
    unlike the risk-level coverage test below)."""
    task = GPTeacherTask(n=3, test_points=0, dim=1)
    delta = 0.05
    runs, naive = 0, 0
    violations = 0
    for seed in range(200):
        _, y, k, _ = sample_teacher(task, seed)
        c = constraint_covariance(k, y, 2)
        exact = _log_orthant_3(c)
        r = certified_log_orthant(c, samples=4, seed=seed, delta=delta, ep=ep_orthant(c))
        runs += 1
        violations += r.log_lower > exact
        naive += r.log_estimate > exact
        assert r.log_lower <= r.log_estimate - math.log(1 / delta)
    assert binomial_p_value(violations, runs, delta) >= ALPHA
    assert binomial_p_value(naive, runs, delta) < ALPHA


@pytest.mark.xfail(
    strict=True,
    reason="hole (harness power): the risk-level GP-teacher coverage test (n = 8) cannot see "
    "ln P(U) at all; a bound that ignores P(U) (KL = 0) has no violations either",
)
def test_risk_level_teacher_coverage_detects_a_bound_that_ignores_p_u() -> None:
    task = GPTeacherTask(n=8, test_points=60, is_samples=50)
    runs = [run_teacher(task, seed) for seed in range(40)]
    ignoring = marginal_bound(0.0, task.n, task.delta).value  # KL(Q‖P) = 0: a planted bug
    violations = sum(ignoring < r.truth for r in runs)
    assert binomial_p_value(violations, len(runs), task.delta + task.delta_is) < ALPHA


def test_low_rank_kernel_with_tiny_jitter_against_brute_force() -> None:
    """Depth 0 (a linear kernel of rank 3 on 14 points in 2-d) plus jitter 1e-8: the
    constraint covariance has condition number ~1e9 and the sequential sampler divides by
    L_ii ~ 1e-4. The certified lower bound stays below a brute-force upper limit of P(U)
    (10⁶ direct draws) and the estimate matches it."""
    from pacbound.marginal import fc_nngp

    rng = np.random.default_rng(0)
    x = rng.standard_normal((14, 2))
    y = (x @ rng.standard_normal(2) + 0.3 > 0).astype(np.int64)  # linearly separable
    k = fc_nngp(x, depth=0, sigma_w=1.0, sigma_b=0.5, nonlinearity="relu") + 1e-8 * np.eye(14)
    c = constraint_covariance(k, y, 2)
    assert np.linalg.cond(c) > 1e8
    g = rng.standard_normal((1_000_000, 14)) @ np.linalg.cholesky(c).T
    hits = np.all(g > 0, axis=1)
    p, se = float(hits.mean()), float(hits.std() / 1000.0)
    r = certified_log_orthant(c, samples=2000, seed=1, delta=0.05, ep=ep_orthant(c))
    assert r.log_lower <= math.log(p + 4 * se)
    assert math.exp(r.log_estimate) == pytest.approx(p, rel=0.08)


# --- the prior: fixed before S, white noise a function of the input -------------------------


def test_near_duplicate_inputs_with_conflicting_labels_never_overclaim() -> None:
    """Pairs (e_k, (1 + ulp) e_k) labelled 0 and 1 under the erf kernel (σ_b = 0: the pairs
    are exactly independent), down to jitters at the float64 resolution of the kernel. The
    exact ln P(U) (mpmath, 60 digits) is above the certified lower bound, or the run ends
    with a NumericalError (exit 4): never an overclaim."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 60
    pairs = 5
    x = np.zeros((2 * pairs, pairs))
    for k in range(pairs):
        x[2 * k, k] = 1.0
        x[2 * k + 1, k] = np.nextafter(1.0, 2.0)
    labels = np.array([0, 1] * pairs)
    up = mp.mpf(float(np.nextafter(1.0, 2.0)))

    def exact(jitter: float) -> float:
        def e(k12: Any, k11: Any, k22: Any) -> Any:
            return 2 / mp.pi * mp.asin(2 * k12 / mp.sqrt((1 + 2 * k11) * (1 + 2 * k22)))

        a = mp.mpf(1) / pairs  # σ_w² ⟨x, x'⟩ / d
        k11 = e(a, a, a) + mp.mpf(jitter)
        k22 = e(a * up * up, a * up * up, a * up * up) + mp.mpf(jitter)
        k12 = e(a * up, a, a * up * up)
        rho = -k12 / mp.sqrt(k11 * k22)  # opposite labels
        return float(pairs * mp.log(mp.mpf(1) / 4 + mp.asin(rho) / (2 * mp.pi)))

    outcomes = []
    for jitter in (1e-6, 1e-10, 1e-13, 1e-17):
        options = _options(kernel="erf", sigma_b=(0.0,), jitter=jitter, is_samples=100)
        try:
            cert = certify_point(0, Sample(torch.tensor(x), labels, 2, None), options)
        except NumericalError:
            outcomes.append("exit 4")
            continue
        lower = cert.results["log_orthant"]
        truth = exact(jitter)
        assert lower["log_lower"] <= truth
        assert lower["log_estimate"] == pytest.approx(truth, abs=0.05)
        outcomes.append("certified")
    assert outcomes[0] == "certified" and outcomes[-1] == "exit 4"


def test_the_heldout_prior_is_the_certified_prior() -> None:
    """The noise of the prior is a function of the input: the joint kernel the held-out
    estimate conditions on restricts, on S, to exactly the certified kernel — also for rows
    equal as numbers but not as bytes (+0.0 and −0.0 are distinct inputs for both)."""
    x = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [1.0, 0.5]], dtype=torch.float64)
    test = torch.tensor([[-0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    options = _options()
    spec = kernel_spec(options, 0, 2)
    certified = kernel_on(spec, options, x, torch.device("cpu"))
    joint = joint_kernel(spec, options, x, test, torch.device("cpu"))
    assert np.array_equal(joint[:3, :3], certified)
    # the test row −0.0 shares its white noise with training row 1 only
    assert joint[1, 3] == pytest.approx(joint[1, 1]) and joint[0, 3] < joint[0, 0]
    with pytest.raises(InvalidInputError, match="examples 0 and 3 have identical inputs"):
        kernel_on(spec, options, torch.cat([x, x[:1]]), torch.device("cpu"))


def test_monte_carlo_kernel_row_depends_on_its_own_input_only() -> None:
    """The prior must not depend on S: a row of the Monte-Carlo kernel is the same whatever
    the other inputs, their order or the batch they are evaluated in (up to round-off)."""
    from pacbound.marginal.mc_kernel import monte_carlo_kernel
    from pacbound.models import mlp

    def factory(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return mlp(in_features=5, hidden=[16], num_classes=2)

    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    k = monte_carlo_kernel(factory, x, draws=40, seed=3, batch_size=4)
    perm = torch.tensor([8, 2, 5, 0, 7, 1, 3, 6, 4])
    kp = monte_carlo_kernel(factory, x[perm], draws=40, seed=3, batch_size=1)
    sub = monte_carlo_kernel(factory, x[:2], draws=40, seed=3, batch_size=9)
    assert np.allclose(kp, k[np.ix_(perm.numpy(), perm.numpy())], rtol=1e-5, atol=1e-7)
    assert np.allclose(sub, k[:2, :2], rtol=1e-5, atol=1e-7)
    other = monte_carlo_kernel(factory, x, draws=40, seed=4, batch_size=4)
    assert not np.allclose(other, k)  # the seed, not the data, picks the networks


def _one_conv_layer_kernel(x: np.ndarray, sw: float, sb: float, k: int) -> np.ndarray:
    """The NNGP kernel of ONE 'same' k × k convolution (C_in → ∞ channels, weights
    N(0, σ_w²/(C_in k²)), biases N(0, σ_b²)), ReLU, global average pooling and a dense
    readout (weights N(0, σ_w²/width), bias N(0, σ_b²)), written out from explicit patches:
    K¹_pp' = σ_w² ⟨patch_p(x), patch_p'(x')⟩/(C k²) + σ_b², then the arc-cosine expectation."""
    n, c, h, w = x.shape
    r = k // 2
    pad = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)))
    patches = np.stack(
        [pad[:, :, a : a + k, b : b + k].reshape(n, -1) for a in range(h) for b in range(w)],
        axis=1,
    )  # (n, P, c k²)
    flat = patches.reshape(n * h * w, -1)
    k1 = sw**2 * flat @ flat.T / (c * k * k) + sb**2  # (nP, nP)
    d = np.sqrt(np.diag(k1))
    cos = np.clip(k1 / np.outer(d, d), -1.0, 1.0)
    t = np.arccos(cos)
    e = np.outer(d, d) * (np.sin(t) + (math.pi - t) * cos) / (2 * math.pi)
    e = e.reshape(n, h * w, n, h * w).mean(axis=(1, 3))
    return sw**2 * e + sb**2


def test_conv_kernel_depth_one_is_one_conv_layer() -> None:
    from pacbound.marginal import conv_nngp

    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4))
    exact = _one_conv_layer_kernel(x, 1.2, 0.3, 3)
    assert np.allclose(conv_nngp(x, depth=1, sigma_w=1.2, sigma_b=0.3), exact, rtol=1e-10)


def _one_layer_depth() -> int:
    """The ``depth`` argument that makes conv_nngp one conv+ReLU layer (0 before the fix of
    the off-by-one above, 1 after)."""
    from pacbound.marginal import conv_nngp

    x = np.random.default_rng(1).standard_normal((2, 1, 3, 3))
    one = _one_conv_layer_kernel(x, 1.0, 0.1, 3)
    try:
        zero = conv_nngp(x, depth=0, sigma_w=1.0, sigma_b=0.1)
    except InvalidInputError:  # depth counts conv layers: 0 is refused
        return 1
    return 0 if np.allclose(zero, one) else 1


@pytest.mark.parametrize("filter_size", [1, 5, 9])
def test_conv_kernel_of_any_filter_that_fits_against_explicit_patches(filter_size: int) -> None:
    """Non-square 4 × 5 images, 2 channels, filters up to 9 (shifts past the border)."""
    from pacbound.marginal import conv_nngp

    x = np.random.default_rng(0).standard_normal((3, 2, 4, 5))
    got = conv_nngp(x, depth=_one_layer_depth(), sigma_w=1.2, sigma_b=0.3, filter_size=filter_size)
    assert np.allclose(got, _one_conv_layer_kernel(x, 1.2, 0.3, filter_size), rtol=1e-12)


def test_conv_kernel_with_a_filter_larger_than_the_image() -> None:
    from pacbound.marginal import conv_nngp

    x = np.random.default_rng(0).standard_normal((3, 2, 4, 5))
    got = conv_nngp(x, depth=_one_layer_depth(), sigma_w=1.2, sigma_b=0.3, filter_size=11)
    assert np.allclose(got, _one_conv_layer_kernel(x, 1.2, 0.3, 11), rtol=1e-12)


# --- multi-class: argmax of C GPs against brute force ----------------------------------------


def test_multiclass_orthant_against_brute_force_argmax() -> None:
    """n = 3, C = 4: P(argmax_c f_c(x_i) = y_i ∀ i) by 400 000 direct draws of the C
    independent GPs, against the certified estimate built on constraint_covariance."""
    k = np.array([[1.0, 0.6, -0.2], [0.6, 1.3, 0.4], [-0.2, 0.4, 0.8]])
    y = np.array([3, 1, 3])
    rng = np.random.default_rng(11)
    f = rng.standard_normal((400_000, 4, 3)) @ np.linalg.cholesky(k).T  # f[m, class, i]
    hits = np.all(f.argmax(axis=1) == y[None, :], axis=1)
    p, se = float(hits.mean()), float(hits.std() / math.sqrt(hits.size))
    cov = constraint_covariance(k, y, 4)
    assert cov.shape == (9, 9)
    r = certified_log_orthant(cov, samples=20_000, seed=2, delta=0.05, ep=ep_orthant(cov))
    assert math.exp(r.log_estimate) == pytest.approx(p, abs=4 * se + 0.02 * p)
    assert r.log_lower <= math.log(p + 4 * se)


# --- the bound: n, δ parts, rounding ---------------------------------------------------------


def test_one_example_certificate_is_exact_and_rounded_up() -> None:
    """n = 1: P(U) = 1/2 and the EP-cavity proposal is the exact truncated prior, so every
    weight is 1/2: ln P̲(U) = ln(1/2) − ln(1/δ_IS) − margin, lowered by the reproducibility
    margin (10⁻⁹ of itself), and the bound is 1 − exp(−[−ln P̲(U) + ln(2√1/δ_PB)]) raised by
    10⁻⁹ of itself, with δ_PB + δ_IS = δ."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    options = _options(is_samples=7)
    cert = certify_point(0, Sample(torch.tensor([[0.3, -1.2]]), np.array([1]), 2, None), options)
    res = cert.results
    lower = res["log_orthant"]
    assert lower["log_estimate"] == pytest.approx(math.log(0.5), abs=1e-12)
    markov = math.log(0.5) - math.log(40.0)
    assert lower["log_lower"] == pytest.approx(markov * (1 + 1e-9), abs=1e-12)
    assert lower["log_lower"] <= markov * (1 + 1e-9) and lower["reproducibility_margin"] == 1e-9
    parts = {p["name"]: p for p in res["delta_budget"]["parts"]}
    assert parts["pac-bayes"]["per_choice"] + parts["importance-sampling"]["per_choice"] <= 0.05
    kl = mp.mpf(res["kl_nats"])
    exact = 1 - mp.exp(-(kl + mp.log(2 / mp.mpf(parts["pac-bayes"]["per_choice"]))))
    assert res["bound"] >= exact * (1 + mp.mpf(1e-9)) * (1 - mp.mpf(1e-15))
    assert float(exact) * (1 + 1e-9) == pytest.approx(res["bound"], rel=1e-13)
    from pacbound.certify.marginal_facts import marginal_facts

    rows = dict(marginal_facts(res).rows)
    shown = float(rows["certified ln P(U) ≥"].split()[0])
    assert shown <= lower["log_lower"]  # a lower bound printed rounded down
    assert float(rows["KL(Q‖P) = −ln P(U) ≤"].split()[0]) >= res["kl_nats"]


def test_a_grid_pays_both_delta_parts_in_the_bound_itself() -> None:
    """A 2 × 2 kernel grid: the chosen point's bound is kl⁻¹(0, ·) with δ_PB/4 (not δ_PB),
    its Markov term is ln(4/δ_IS) (not ln(1/δ_IS)), and both parts sum to at most δ."""
    from pacbound.certify.marginal import choose_kernel

    options = _options(sigma_w=(0.7, 1.5), sigma_b=(0.0, 0.4), is_samples=100)
    x = np.random.default_rng(4).normal(size=(7, 3))
    best, search = choose_kernel(
        Sample(torch.tensor(x), np.array([0, 1, 1, 0, 1, 0, 0]), 2, None), options
    )
    res = best.results
    lower = res["log_orthant"]
    markov = lower["log_estimate"] - math.log(4 / 0.025) - lower["margin"]
    assert lower["log_lower"] == pytest.approx(markov * (1 + 1e-9), abs=1e-12)
    n, delta_pb = 7, 0.025 / 4
    exact = 1 - math.exp(-(res["kl_nats"] + math.log(2 * math.sqrt(n) / delta_pb)) / n)
    assert res["bound"] >= exact and res["bound"] == pytest.approx(exact * (1 + 1e-9), rel=1e-12)
    per = [p["per_choice"] * p["grid_size"] for p in res["delta_budget"]["parts"]]
    assert sum(per) <= 0.05 and len(search) == 4


# --- the command line: bad input ends with exit 3/4, forged reports are refused --------------


BASE = ("certify", "--method", "marginal", "--kernel-depth", "1", "--is-samples", "50")
TWO = (*BASE, "--num-classes", "2")  # C fixed before the labels are read


@pytest.mark.parametrize(
    ("rows", "labels", "extra", "code", "message"),
    [
        ([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], [0, 1, 1], (), 3, "identical inputs"),
        ([[np.nan, 2.0], [1.0, 0.0]], [0, 1], (), 3, "NaN/Inf features"),
        ([[1.0, 2.0], [0.0, 1.0]], [0, 1], ("--jitter", "0"), 3, "--jitter must be > 0"),
        ([[1.0, 2.0], [0.0, 1.0]], [0, 1], ("--jitter", "-1e-3"), 3, "--jitter must be > 0"),
        ([[1.0, 2.0], [0.0, 1.0]], [0, 1], ("--jitter", "nan"), 3, "--jitter must be finite"),
        ([[1.0, 2.0], [0.0, 1.0]], [0, 1], ("--max-memory", "100"), 3, "largest n that fits"),
        ([[1.0, 2.0], [0.0, 1.0]], [0, 2], (), 3, "holds the label 2, outside 0..1"),
        (
            [[1.0, 0.0], [1.0 + 2.0**-23, 0.0], [0.0, 1.0]],  # distinct in float32
            [0, 1, 1],
            ("--jitter", "1e-12"),  # above the float64 resolution floor (5.7e-14 here)
            4,
            "EP did not converge",
        ),
    ],
)
def test_bad_input_ends_with_the_documented_exit_code(
    tmp_path: Path, rows: list[list[float]], labels: list[int], extra: tuple[str, ...], code: int,
    message: str,
) -> None:  # fmt: skip
    np.savez(tmp_path / "d.npz", x=np.array(rows), y=np.array(labels))
    got, out, err = _run(*TWO, "--data", str(tmp_path / "d.npz"), "--json", *extra)
    assert got == code, err
    assert message in err and out == ""


@pytest.mark.parametrize("extra", [("--sigma-b", "1e200"), ("--sigma-w", "1e150")])
def test_a_kernel_that_overflows_float64_is_refused_naming_sigma(
    tmp_path: Path, extra: tuple[str, str]
) -> None:
    np.savez(tmp_path / "d.npz", x=np.array([[1e30, 2.0], [0.0, 1e30]]), y=np.array([0, 1]))
    code, _, err = _run(*TWO, "--data", str(tmp_path / "d.npz"), "--json", *extra)
    assert code in (3, 4), err
    assert "sigma" in err.lower() and "overflow" in err.lower(), err


def test_a_subnormal_delta_is_still_a_finite_markov_term() -> None:
    r = certified_log_orthant(np.eye(2), samples=5, seed=0, delta=5e-324)
    assert r.log_lower == pytest.approx(2 * math.log(0.5) + math.log(5e-324), abs=1e-9)


def test_one_class_under_a_label_map_is_a_true_certificate(tmp_path: Path) -> None:
    """Both examples in class 0 of a binary map: C = 2 is fixed by the map, Q is the prior
    conditioned on f < 0 at both inputs: P(U) is the n = 2 orthant of the kernel."""
    x = np.array([[1.0, 0.5, -0.2], [0.3, 1.0, 0.4]])
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 0]))
    code, out, err = _run(
        *BASE, "--data", str(tmp_path / "d.npz"), "--label-map", "0:0,1:1", "--json",
        "--sigma-b", "0.1", "--sigma-w", "1",
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)["results"]
    k0 = x @ x.T / 3 + 0.01
    d = np.sqrt(np.diag(k0))
    cos = np.clip(k0 / np.outer(d, d), -1, 1)
    t = np.arccos(cos)
    k = np.outer(d, d) * (np.sin(t) + (math.pi - t) * cos) / (2 * math.pi) + 0.01
    k += 1e-6 * np.eye(2)
    assert res["labels"]["counts"] == [2, 0]
    assert res["log_orthant"]["log_lower"] <= _log_orthant_3(k)


def test_the_number_of_classes_in_the_prior_does_not_come_from_s(tmp_path: Path) -> None:
    """C is fixed before S is seen: without --num-classes (or a --label-map) the run is
    refused before any work, naming --num-classes; with it, a sample that misses the top
    class gets the same prior of 3 GPs (n(C − 1) = 12 constraints), and its P(U) is the
    smaller 3-class one (the 2-class prior would have fitted it with probability ≥ this)."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(6, 3))
    classes, lowers = [], []
    for name, y in (("all", [0, 1, 2, 0, 1, 2]), ("missing", [0, 1, 1, 0, 1, 0])):
        np.savez(tmp_path / f"{name}.npz", x=x, y=np.array(y))
        code, out, err = _run(*BASE, "--data", str(tmp_path / f"{name}.npz"), "--json")
        assert code == 3 and out == "" and "--num-classes" in err and err.count("\n") == 1
        code, out, err = _run(
            *BASE, "--data", str(tmp_path / f"{name}.npz"), "--json", "--num-classes", "3"
        )
        assert code == 0, err
        res = json.loads(out)["results"]
        classes.append((res["labels"]["classes"], res["labels"]["constraints"]))
        lowers.append(res["log_orthant"]["log_lower"])
    assert classes == [(3, 12), (3, 12)]
    code, out, err = _run(*TWO, "--data", str(tmp_path / "missing.npz"), "--json")
    assert code == 0, err
    two = json.loads(out)["results"]
    assert two["labels"]["constraints"] == 6
    assert lowers[1] < two["log_orthant"]["log_lower"]  # 3 GPs: a smaller P(U)


@pytest.fixture(scope="module")
def certified(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("review_marginal")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(14, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 3] * 3 + [0, 3])
    np.savez(root / "d.npz", x=x, y=y)
    code, _, err = _run(
        *BASE, "--data", str(root / "d.npz"), "--label-map", "0-1:0,2-3:1", "--quiet",
        "--output", str(root / "r.json"), "--save-kernel", str(root / "k.json"),
    )  # fmt: skip
    assert code == 0, err
    return root


def _forge(root: Path, name: str, edit: Any) -> Path:
    document = json.loads((root / "r.json").read_text())
    edit(document)
    document["results_sha256"] = results_hash(document["results"])
    path = root / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


def _set(*path_and_value: Any) -> Any:
    *path, value = path_and_value

    def edit(document: dict[str, Any]) -> None:
        node = document
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("seed", _set("options", "seed", 1)),
        ("jitter", _set("options", "jitter", [1e-3])),
        ("num_classes", _set("options", "num_classes", 3)),
        ("is_delta", _set("options", "is_delta", 0.04)),
        ("label_map", _set("inputs", "data", "label_map", "0:0,1-3:1")),
        ("n", _set("results", "n", 15)),
        ("kernel_jitter", _set("results", "kernel", "jitter", 1e-7)),
        ("per_choice", _set("results", "delta_budget", "parts", 1, "per_choice", 0.03)),
        ("bound", _set("results", "bound", 0.5)),
    ],
)
def test_verify_refuses_a_forged_report(certified: Path, name: str, edit: Any) -> None:
    code, _, err = _run("verify", str(_forge(certified, name, edit)))
    assert code in (1, 3), err
    assert code == 1 or "label" in err or "kernel" in err


def _scaled(factor: float) -> Any:
    def edit(document: dict[str, Any]) -> None:
        document["results"]["bound"] *= factor

    return edit


def test_verify_refuses_a_bound_forged_below_its_tolerance(certified: Path) -> None:
    code, _, err = _run("verify", str(_forge(certified, "low6", _scaled(1 - 1e-6))))
    assert code == 1 and "bound" in err, err


def test_verify_refuses_a_bound_forged_lower_within_the_tolerance(certified: Path) -> None:
    """The bound-side leaves are compared one-sidedly: the bound lowered by 5e-10 (inside the
    symmetric 1e-9) is refused, and so is the certified ln P(U) raised or the KL lowered;
    the same amounts on the safe side are accepted."""
    code, _, err = _run("verify", str(_forge(certified, "low10", _scaled(1 - 5e-10))))
    assert code == 1 and "bound" in err, err
    code, _, err = _run("verify", str(_forge(certified, "high10", _scaled(1 + 5e-10))))
    assert code == 0, err

    def lower_scaled(factor: float) -> Any:
        def edit(document: dict[str, Any]) -> None:
            document["results"]["log_orthant"]["log_lower"] *= factor  # negative: × < 1 raises
            document["results"]["kl_nats"] *= factor

        return edit

    code, _, err = _run("verify", str(_forge(certified, "up10", lower_scaled(1 - 5e-10))))
    assert code == 1 and "log_orthant.log_lower" in err and "kl_nats" in err, err
    code, _, err = _run("verify", str(_forge(certified, "down10", lower_scaled(1 + 5e-10))))
    assert code == 0, err


def test_verify_accepts_the_honest_report(certified: Path) -> None:
    code, out, err = _run("verify", str(certified / "r.json"), "--json")
    assert code == 0, err
    fields = {f["field"] for f in json.loads(out)["fields"]}
    assert {"bound", "log_orthant.log_lower", "labels.counts[1]", "n"} <= fields


def test_every_printed_bound_is_rounded_the_safe_way(certified: Path) -> None:
    """The terminal table of certify: the bound and KL rounded up, ln P(U) rounded down
    (the JSON values are the exact ones); the markdown report row too."""
    import re

    code, out, err = _run(
        *BASE, "--data", str(certified / "d.npz"), "--label-map", "0-1:0,2-3:1"
    )  # fmt: skip
    assert code == 0, err
    res = json.loads((certified / "r.json").read_text())["results"]

    def number(label: str) -> float:
        match = re.search(re.escape(label) + r"\s*│\s*(-?[0-9.]+)", out)
        assert match, (label, out)
        return float(match.group(1))

    assert number("bound on true 0-1 error") >= res["bound"]
    assert number("certified ln P(U) ≥") <= res["log_orthant"]["log_lower"]
    assert number("KL(Q‖P) = −ln P(U) ≤") >= res["kl_nats"]
    code, table, err = _run("report", str(certified / "r.json"), "--format", "markdown")
    assert code == 0, err
    row = table.strip().splitlines()[-1].split("|")
    assert float(row[8]) >= res["bound"] and float(row[6]) >= res["kl_nats"]

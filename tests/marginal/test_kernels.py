"""NNGP kernels against the empirical covariance of random finite networks (tolerances from the
Monte-Carlo standard error), the Monte-Carlo kernel's contract, and KernelSpec."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import erf

from pacbound.errors import InvalidInputError
from pacbound.marginal import KernelSpec, conv_nngp, fc_nngp, kernel_matrix, monte_carlo_kernel
from pacbound.marginal.mc_kernel import draw_seed

Z = 4.5  # standard errors allowed per entry (≈ 7e-6 two-sided per entry for a normal mean)
ACT = {"relu": lambda h: np.maximum(h, 0.0), "erf": erf}


def _check_mc(products: np.ndarray, k: np.ndarray) -> None:
    """products: (M, n, n) draws of f fᵀ; their mean must match k within Z standard errors."""
    mean = products.mean(axis=0)
    se = products.std(axis=0, ddof=1) / math.sqrt(products.shape[0])
    assert np.all(np.abs(mean - k) <= Z * se), (mean, k, se)


def _fc_network_outputs(x, *, depth, sw, sb, act, widths, draws, rng) -> np.ndarray:
    """Outputs (draws, n) of independently initialised networks x → widths → 1 output."""
    h = x[None]  # (M, n, fan_in)
    fan_in = x.shape[1]
    for width in [*widths[:depth], 1]:
        w = rng.standard_normal((draws, h.shape[2], width))
        b = rng.standard_normal((draws, 1, width))
        pre = sw * (h @ w) / math.sqrt(fan_in) + sb * b
        h, fan_in = (ACT[act](pre) if width != 1 or len(widths) < depth else pre), width
        if width == 1:
            return pre[:, :, 0]
    raise AssertionError


@pytest.mark.parametrize("act", ["relu", "erf"])
@pytest.mark.parametrize("depth", [1, 2])
def test_fc_nngp_matches_random_networks(act: str, depth: int) -> None:
    # Depth 1: E[f fᵀ] equals the NNGP exactly at any width (the first layer's
    # pre-activations are exactly Gaussian); 10⁴ draws. Depth 2: the bias is O(1/width₁)
    # (≈ 3e-3 relative with width₁ = 400), below a fifth of the standard error (≈ 1.4e-2) of
    # 5000 draws; the last hidden width does not change E[f fᵀ] (its units are
    # exchangeable), so it is kept small.
    rng = np.random.default_rng(depth * 10 + len(act))
    x = rng.standard_normal((4, 3))
    x[3] = -x[0]  # a pair with negative correlation
    sw, sb = 1.3, 0.4
    widths, draws = ([64], 10_000) if depth == 1 else ([400, 2], 5000)
    f = _fc_network_outputs(
        x, depth=depth, sw=sw, sb=sb, act=act, widths=widths, draws=draws, rng=rng
    )
    k = fc_nngp(x, depth=depth, sigma_w=sw, sigma_b=sb, nonlinearity=act)
    _check_mc(f[:, :, None] * f[:, None, :], k)


def test_fc_nngp_closed_forms() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    k0 = fc_nngp(x, depth=0, sigma_w=2.0, sigma_b=0.5, nonlinearity="relu")
    assert np.allclose(k0, 4.0 * x @ x.T / 2 + 0.25)
    k1 = fc_nngp(x, depth=1, sigma_w=math.sqrt(2.0), sigma_b=0.0, nonlinearity="relu")
    assert np.allclose(np.diag(k1), np.diag(x @ x.T))  # He scaling keeps the diagonal
    assert k1[0, 1] == pytest.approx(2.0 * math.sqrt(1.0 * 4.0) / (2 * math.pi))  # θ = π/2


def _patches(img: np.ndarray, r: int) -> np.ndarray:
    """(..., c, h, w) → (..., h·w, c·k²) zero-padded patches (torch Conv2d padding=r order)."""
    *lead, c, h, w = img.shape
    pad = np.pad(img, [(0, 0)] * len(lead) + [(0, 0), (r, r), (r, r)])
    cols = [
        pad[..., du : du + h, dv : dv + w] for du in range(2 * r + 1) for dv in range(2 * r + 1)
    ]
    stacked = np.stack(cols, axis=-1)  # (..., c, h, w, k²)
    stacked = np.moveaxis(stacked, -4, -2)  # (..., h, w, c, k²)
    return stacked.reshape(*lead, h * w, c * (2 * r + 1) ** 2)


def _conv_layer2_one_channel(h: np.ndarray, rng: np.random.Generator, sw: float, sb: float):
    """(M, n, 4, 4, C) activations → (M, n, 16) pre-activations of one 3×3 'same' filter."""
    m, n, hh, ww, c = h.shape
    pad = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    w2 = rng.standard_normal((m, 3, 3, c))
    out = np.zeros((m, n, hh, ww))
    for du in range(3):
        for dv in range(3):
            out += np.einsum("mnhwc,mc->mnhw", pad[:, :, du : du + hh, dv : dv + ww], w2[:, du, dv])
    out = sw * out / math.sqrt(9 * c) + sb * rng.standard_normal((m, 1, 1, 1))
    return out.reshape(m, n, hh * ww, 1)


@pytest.mark.parametrize("depth", [1, 2])
def test_conv_nngp_matches_random_cnns(depth: int) -> None:
    # Random CNNs (3×3 convolutions, zero padding, ReLU, global average pooling, dense
    # readout), 4000 draws. Depth 1 is unbiased at any width. Depth 2: 256 channels in layer
    # 1 (bias O(1/256), a fraction of the standard error), one channel in layer 2 (its
    # channels are exchangeable, so their number does not change E[f fᵀ]).
    rng = np.random.default_rng(depth)
    x = rng.standard_normal((3, 2, 4, 4))
    sw, sb, chunk = 1.2, 0.3, 500
    width = 32 if depth == 1 else 256
    p = _patches(x, 1)  # (n, P, c·9)
    outs = []
    for _ in range(4000 // chunk):
        w1 = rng.standard_normal((chunk, 1, p.shape[2], width))
        b1 = rng.standard_normal((chunk, 1, 1, width))
        h = np.maximum(sw * (p[None] @ w1) / math.sqrt(p.shape[2]) + sb * b1, 0.0)
        if depth == 2:
            h2 = _conv_layer2_one_channel(h.reshape(chunk, 3, 4, 4, width), rng, sw, sb)
            h = np.maximum(h2, 0.0)
        gap = h.mean(axis=2)  # (M, n, C)
        v = rng.standard_normal((chunk, gap.shape[2], 1))
        bias = sb * rng.standard_normal((chunk, 1))
        outs.append((sw * (gap @ v) / math.sqrt(gap.shape[2]))[:, :, 0] + bias)
    f = np.concatenate(outs)
    k = conv_nngp(x, depth=depth, sigma_w=sw, sigma_b=sb, filter_size=3)
    _check_mc(f[:, :, None] * f[:, None, :], k)


def _mlp_factory(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 128), torch.nn.ReLU(), torch.nn.Linear(128, 2))
    for layer in (net[0], net[2]):
        torch.nn.init.normal_(layer.weight, std=1.0 / math.sqrt(layer.in_features))
        torch.nn.init.normal_(layer.bias, std=0.2)
    return net


def test_monte_carlo_kernel_contract() -> None:
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    k = monte_carlo_kernel(_mlp_factory, x, draws=400, seed=3, readout="first")
    assert k.shape == (6, 6) and np.allclose(k, k.T)
    assert np.linalg.eigvalsh(k)[0] >= -1e-10
    # depth 1 is unbiased at any width; Isserlis gives Var(f_i f_j) ≈ K_ii K_jj + K_ij².
    ref = fc_nngp(x.double().numpy(), depth=1, sigma_w=1.0, sigma_b=0.2, nonlinearity="relu")
    se = np.sqrt((np.outer(np.diag(ref), np.diag(ref)) + ref**2) / 400)
    assert np.all(np.abs(k - ref) <= Z * 1.2 * se)
    small = monte_carlo_kernel(_mlp_factory, x, draws=100, seed=3, readout="first")
    again = monte_carlo_kernel(_mlp_factory, x, draws=100, seed=3, readout="first")
    assert np.array_equal(small, again)
    assert not np.allclose(
        small, monte_carlo_kernel(_mlp_factory, x, draws=100, seed=4, readout="first")
    )
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    permuted = monte_carlo_kernel(_mlp_factory, x[perm], draws=100, seed=3, readout="first")
    assert np.allclose(permuted, small[np.ix_(perm.numpy(), perm.numpy())], rtol=1e-6, atol=1e-9)
    low = monte_carlo_kernel(_mlp_factory, x, draws=2, seed=0, readout="second-minus-first")
    assert np.linalg.matrix_rank(low, tol=1e-8 * np.abs(low).max()) <= 2
    per = monte_carlo_kernel(_mlp_factory, x, draws=10, seed=0, readout="per-class")
    assert per.shape == (2, 6, 6)
    avg = monte_carlo_kernel(_mlp_factory, x, draws=10, seed=0, readout="class-average")
    assert np.allclose(avg, per.mean(axis=0))
    assert draw_seed(3, 0) == draw_seed(3, 0) != draw_seed(3, 1)
    with pytest.raises(InvalidInputError, match="readout"):
        monte_carlo_kernel(_mlp_factory, x, draws=2, seed=0, readout="mean")


def test_kernel_spec_and_dispatch() -> None:
    spec = KernelSpec("erf", 2, 1.5, 0.1, 1e-3, {"note": 1})
    assert KernelSpec.from_dict(spec.to_dict()) == spec
    x = np.random.default_rng(0).standard_normal((5, 4))
    k = kernel_matrix(spec, x)
    assert np.allclose(
        k - 1e-3 * np.eye(5), fc_nngp(x, depth=2, sigma_w=1.5, sigma_b=0.1, nonlinearity="erf")
    )
    imgs = np.random.default_rng(1).standard_normal((2, 1, 3, 3))
    conv = KernelSpec("conv-relu", 1, 1.0, 0.0, 0.0, {"filter_size": 3})
    assert np.allclose(
        kernel_matrix(conv, imgs), conv_nngp(imgs, depth=1, sigma_w=1.0, sigma_b=0.0)
    )
    with pytest.raises(InvalidInputError, match="choose one of"):
        KernelSpec("tanh", 1, 1.0, 0.0, 0.0)
    with pytest.raises(InvalidInputError, match="identical"):
        kernel_matrix(spec, np.vstack([x, x[:1]]))
    with pytest.raises(InvalidInputError, match="factory"):
        kernel_matrix(KernelSpec("monte-carlo", 1, 1.0, 0.0, 0.0), x)
    mc = KernelSpec("monte-carlo", 1, 1.0, 0.0, 1e-2, {"draws": 20, "seed": 7, "readout": "first"})
    xt = torch.as_tensor(x[:, :3], dtype=torch.float32)
    direct = monte_carlo_kernel(_mlp_factory, xt, draws=20, seed=7, readout="first")
    assert np.allclose(kernel_matrix(mc, xt, factory=_mlp_factory), direct + 1e-2 * np.eye(5))
    with pytest.raises(InvalidInputError, match="nonlinearity"):
        fc_nngp(x, depth=0, sigma_w=1.0, sigma_b=0.0, nonlinearity="tanh")
    with pytest.raises(InvalidInputError, match="shape"):
        fc_nngp(x[0], depth=1, sigma_w=1.0, sigma_b=0.0, nonlinearity="relu")
    with pytest.raises(InvalidInputError, match="filter_size"):
        conv_nngp(imgs, depth=1, sigma_w=1.0, sigma_b=0.0, filter_size=2)

"""Exact NNGP kernels of random fully connected and convolutional networks (NumPy, float64).

Prior over functions. A network with i.i.d. weights W ~ N(0, σ_w²/fan_in) and biases
b ~ N(0, σ_b²) converges, as its widths grow, to a Gaussian process f ~ GP(0, k) (Neal 1994;
Lee et al. 2018; Matthews et al. 2018). ``depth`` counts the hidden layers (each followed by
the nonlinearity φ); the readout layer is included:

    K⁰(x, x') = σ_w² ⟨x, x'⟩ / d + σ_b²                       (first affine layer)
    Kˡ(x, x') = σ_w² E[φ(u) φ(v)] + σ_b²,  (u, v) ~ N(0, Kˡ⁻¹ on {x, x'}),  l = 1..depth

and k = K^depth. ReLU: E[φ(u)φ(v)] = √(k₁₁k₂₂)(sin θ + (π − θ) cos θ)/(2π), cos θ = ρ
(arc-cosine kernel of degree 1, Cho & Saul 2009). erf: E = (2/π) arcsin(2k₁₂/√((1+2k₁₁)(1+2k₂₂)))
(Williams 1997).

Jitter. The prior actually certified is the GP with kernel k(x, x') + jitter·1[x = x']: the NNGP
plus independent white noise of variance ``jitter`` at every input (at test time too). It is
fixed before the sample is seen, so the certificate holds exactly for that GP's random
sampler; the jitter is part of the hypothesis, not an ignored fudge. With exact duplicate
inputs the white noise is shared (it is a function of x), so the matrix is singular and
:func:`kernel_matrix` refuses duplicates (remove them first).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pacbound.errors import InvalidInputError, NumericalError

KERNELS = ("relu", "erf", "conv-relu", "monte-carlo")
NONLINEARITIES = ("relu", "erf")
#: Pairs of images per chunk in :func:`conv_nngp` (bounds memory to chunk · P² floats).
CONV_CHUNK = 64
#: Rows per block in :func:`fc_nngp` (temporaries of FC_ROW_BLOCK · n floats, not n²).
FC_ROW_BLOCK = 512


@dataclass(frozen=True)
class KernelSpec:
    """A kernel fixed before the data are seen (all of it goes into the report).

    ``extra``: for ``conv-relu`` ``{"filter_size": 3, "pooling": "global-average"}``; for
    ``monte-carlo`` the draws ``M``, the ``seed`` and the ``readout``.
    """

    name: str
    depth: int
    sigma_w: float
    sigma_b: float
    jitter: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in KERNELS:
            raise InvalidInputError(
                f"kernel {self.name!r} is unknown; choose one of {', '.join(KERNELS)}",
                param="kernel",
            )
        if self.depth < 0:
            raise InvalidInputError(f"depth must be ≥ 0, got {self.depth}", param="depth")
        if not (self.sigma_w > 0 and self.sigma_b >= 0):
            raise InvalidInputError(
                f"need sigma_w > 0 and sigma_b ≥ 0, got {self.sigma_w}, {self.sigma_b}",
                param="sigma_w",
            )
        if not (self.jitter >= 0 and math.isfinite(self.jitter)):
            raise InvalidInputError(f"jitter must be ≥ 0, got {self.jitter}", param="jitter")
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "depth": int(self.depth),
            "sigma_w": float(self.sigma_w),
            "sigma_b": float(self.sigma_b),
            "jitter": float(self.jitter),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelSpec:
        return cls(
            str(data["name"]),
            int(data["depth"]),
            float(data["sigma_w"]),
            float(data["sigma_b"]),
            float(data["jitter"]),
            dict(data.get("extra", {})),
        )


def _expect(nonlinearity: str, k12: NDArray, k11: NDArray, k22: NDArray) -> NDArray[np.float64]:
    """E[φ(u)φ(v)] for (u, v) centred Gaussian with variances k11, k22, covariance k12."""
    if nonlinearity == "relu":
        norm = np.sqrt(k11 * k22)
        cos = np.clip(np.divide(k12, norm, out=np.zeros_like(k12), where=norm > 0), -1.0, 1.0)
        theta = np.arccos(cos)
        return norm * (np.sin(theta) + (math.pi - theta) * cos) / (2.0 * math.pi)
    if nonlinearity == "erf":
        arg = 2.0 * k12 / np.sqrt((1.0 + 2.0 * k11) * (1.0 + 2.0 * k22))
        return (2.0 / math.pi) * np.arcsin(np.clip(arg, -1.0, 1.0))
    raise InvalidInputError(
        f"nonlinearity {nonlinearity!r} is unknown; choose one of {', '.join(NONLINEARITIES)}",
        param="nonlinearity",
    )


def _check_inputs(x: NDArray, ndim: int, what: str) -> NDArray[np.float64]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != ndim or x.shape[0] < 1:
        raise InvalidInputError(f"inputs must have shape {what}, got {x.shape}", param="x")
    if not np.all(np.isfinite(x)):
        raise InvalidInputError("inputs contain NaN or Inf", param="x")
    return x


def fc_nngp(
    x: NDArray, *, depth: int, sigma_w: float, sigma_b: float, nonlinearity: str
) -> NDArray[np.float64]:
    """The (n, n) NNGP kernel of a depth-``depth`` fully connected network on rows of ``x``.

    >>> k = fc_nngp(np.eye(2), depth=1, sigma_w=1.0, sigma_b=0.0, nonlinearity="relu")
    >>> [round(float(v), 6) for v in (k[0, 0], k[0, 1])]  # (1/2)(1/2) and (1/2)(1/(2π))
    [0.25, 0.079577]
    """
    x = _check_inputs(x, 2, "(n, d)")
    if nonlinearity not in NONLINEARITIES:
        raise InvalidInputError(
            f"nonlinearity {nonlinearity!r} is unknown; choose one of {', '.join(NONLINEARITIES)}",
            param="nonlinearity",
        )
    sw2, sb2 = _squares(sigma_w, sigma_b)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow: _finite refuses it
        k = sw2 * (x @ x.T) / x.shape[1] + sb2
        for _ in range(int(depth)):
            diag = np.diag(k).copy()
            for s in range(0, k.shape[0], FC_ROW_BLOCK):  # in place, row blocks bound memory
                rows = slice(s, s + FC_ROW_BLOCK)
                e = _expect(nonlinearity, k[rows], diag[rows, None], diag[None, :])
                k[rows] = sw2 * e + sb2
            np.fill_diagonal(k, sw2 * _expect(nonlinearity, diag, diag, diag) + sb2)
        k += k.T
        k *= 0.5
    return _finite(k)


def _squares(sigma_w: float, sigma_b: float) -> tuple[float, float]:
    """σ_w², σ_b²; InvalidInputError when a square overflows float64."""
    try:
        sw2, sb2 = float(sigma_w) ** 2, float(sigma_b) ** 2
    except OverflowError:
        sw2 = sb2 = math.inf
    if not (math.isfinite(sw2) and math.isfinite(sb2)):
        raise InvalidInputError(
            f"sigma_w {sigma_w:g} or sigma_b {sigma_b:g} is too large: its square overflows "
            "float64; choose a smaller --sigma-w/--sigma-b",
            param="sigma_w",
        )
    return sw2, sb2


def _finite(k: NDArray) -> NDArray[np.float64]:
    """``k``, or NumericalError when the recursion overflowed float64."""
    if not np.all(np.isfinite(k)):
        raise NumericalError(
            "the NNGP kernel overflows float64 (sigma_w^(2·depth) × |x|² is too large): choose "
            "a smaller --sigma-w/--sigma-b or rescale the inputs"
        )
    return k


def _patch_sum(m: NDArray, r: int) -> NDArray:
    """Σ over shifts q ∈ [−r, r]² of m[..., a+q, b+q, a'+q, b'+q], zero outside the image.

    ``m`` has shape (B, H, W, H, W) (cross-covariances of positions of two images).
    """
    out = np.zeros_like(m)
    h, w = m.shape[1], m.shape[2]
    for du in range(-r, r + 1):
        if abs(du) >= h:
            continue  # the shifted image lies wholly in the zero padding
        for dv in range(-r, r + 1):
            if abs(dv) >= w:
                continue
            dst_a = slice(max(0, -du), min(h, h - du))
            src_a = slice(max(0, du), min(h, h + du))
            dst_b = slice(max(0, -dv), min(w, w - dv))
            src_b = slice(max(0, dv), min(w, w + dv))
            out[:, dst_a, dst_b, dst_a, dst_b] += m[:, src_a, src_b, src_a, src_b]
    return out


def _diag_patch_sum(v: NDArray, r: int) -> NDArray:
    """Σ over shifts q ∈ [−r, r]² of v[..., a+q, b+q] (zero padding); v has shape (n, H, W)."""
    padded = np.pad(v, ((0, 0), (r, r), (r, r)))
    h, w = v.shape[1], v.shape[2]
    out = np.zeros_like(v)
    for du in range(2 * r + 1):
        for dv in range(2 * r + 1):
            out += padded[:, du : du + h, dv : dv + w]
    return out


def conv_nngp(
    x: NDArray,
    *,
    depth: int,
    sigma_w: float,
    sigma_b: float,
    filter_size: int = 3,
    pooling: str = "global-average",
) -> NDArray[np.float64]:
    """NNGP kernel of a ReLU CNN on images ``x`` of shape (n, c, h, w) (Novak et al. 2019;
    Garriga-Alonso et al. 2019).

    Network: ``depth`` ≥ 1 conv layers (stride 1, odd ``filter_size`` k, zero "same" padding,
    weights N(0, σ_w²/(C k²)), biases N(0, σ_b²)) each followed by ReLU, then global average
    pooling and a dense readout (weights N(0, σ_w²/C), bias N(0, σ_b²)). The recursion keeps,
    for each pair of images, the P × P covariance of the P = h·w positions:
    K¹_{pp'} = σ_w²/(c k²) Σ_q ⟨x_{p+q}, x'_{p'+q}⟩ + σ_b², Kˡ⁺¹_{pp'} = σ_w²/k² Σ_q
    E[φφ']_{p+q, p'+q} + σ_b², readout σ_w² mean_{p,p'} E[φφ']_{pp'} + σ_b².

    Cost: O(n² P² k² depth) time and O(CONV_CHUNK · P²) memory (pairs are chunked), so it
    suits small images (8×8: P² = 4096) or small n; use a Monte-Carlo kernel otherwise.
    """
    x = _check_inputs(x, 4, "(n, c, h, w)")
    if depth < 1:
        raise InvalidInputError(
            f"conv-relu depth counts its conv+ReLU layers: need ≥ 1, got {depth}", param="depth"
        )
    if pooling != "global-average":
        raise InvalidInputError(
            f"pooling {pooling!r} is unknown; choose global-average", param="pooling"
        )
    if filter_size < 1 or filter_size % 2 == 0:
        raise InvalidInputError(
            f"filter_size must be odd and ≥ 1, got {filter_size}", param="filter_size"
        )
    n, c = x.shape[:2]
    r, k2 = filter_size // 2, float(filter_size) ** 2
    sw2, sb2 = _squares(sigma_w, sigma_b)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow: _finite refuses it
        # self variances per position (only the diagonal of K(x, x) is needed for the recursion)
        diags = [sw2 * _diag_patch_sum(np.einsum("nchw,nchw->nhw", x, x), r) / (c * k2) + sb2]
        for _ in range(depth - 1):
            e = _expect("relu", diags[-1], diags[-1], diags[-1])
            diags.append(sw2 * _diag_patch_sum(e, r) / k2 + sb2)
        pairs_i, pairs_j = np.triu_indices(n)
        out = np.empty((n, n))
        for start in range(0, pairs_i.size, CONV_CHUNK):
            ii, jj = pairs_i[start : start + CONV_CHUNK], pairs_j[start : start + CONV_CHUNK]
            m = np.einsum("bcij,bckl->bijkl", x[ii], x[jj])
            m = sw2 * _patch_sum(m, r) / (c * k2) + sb2
            for layer in range(depth):
                d1 = diags[layer][ii][:, :, :, None, None]
                d2 = diags[layer][jj][:, None, None, :, :]
                e = _expect("relu", m, d1, d2)
                if layer == depth - 1:
                    vals = sw2 * e.reshape(len(ii), -1).mean(axis=1) + sb2
                else:
                    m = sw2 * _patch_sum(e, r) / k2 + sb2
            out[ii, jj] = vals
            out[jj, ii] = vals
    return _finite(out)


def _check_no_duplicates(x: NDArray) -> None:
    rows = np.ascontiguousarray(x.reshape(x.shape[0], -1))
    seen: dict[bytes, int] = {}
    for i, row in enumerate(rows):
        key = row.tobytes()
        if key in seen:
            raise InvalidInputError(
                f"inputs {seen[key]} and {i} are identical: the jittered kernel "
                "k + jitter·1[x = x'] is singular on duplicates; remove duplicate inputs",
                param="x",
            )
        seen[key] = i


def kernel_matrix(
    spec: KernelSpec,
    x: Any,
    *,
    factory: Callable[[int], Any] | None = None,
    batch_size: int = 1024,
    device: str = "cpu",
) -> NDArray[np.float64]:
    """k(x_i, x_j) + jitter·1[i = j]: the prior's covariance on the inputs ``x``.

    ``relu``/``erf``: x of shape (n, d) (or (n, …), flattened); ``conv-relu``: (n, c, h, w),
    ``extra`` ``filter_size`` (3) and ``pooling`` (global-average). Inputs must be distinct
    (module docstring). ``monte-carlo``: the second moment of ``extra["draws"]`` networks
    ``factory(seed_m)`` (:func:`pacbound.marginal.mc_kernel.monte_carlo_kernel`, which
    imports torch; ``extra`` ``draws``, ``seed`` and ``readout``), ``x`` a tensor or array.
    """
    if spec.name == "monte-carlo":
        if factory is None:
            raise InvalidInputError(
                "kernel 'monte-carlo' needs a network factory (seed -> module)", param="kernel"
            )
        from pacbound.marginal.mc_kernel import monte_carlo_kernel_of

        k = monte_carlo_kernel_of(spec, factory, x, batch_size=batch_size, device=device)
    else:
        x = np.asarray(x, dtype=np.float64)
        k = _analytic(spec, x)
        _check_no_duplicates(x)
    k[np.diag_indices_from(k)] += float(spec.jitter)
    return k


def _analytic(spec: KernelSpec, x: NDArray) -> NDArray[np.float64]:
    if spec.name in NONLINEARITIES:
        return fc_nngp(
            x.reshape(x.shape[0], -1),
            depth=spec.depth,
            sigma_w=spec.sigma_w,
            sigma_b=spec.sigma_b,
            nonlinearity=spec.name,
        )
    return conv_nngp(
        x,
        depth=spec.depth,
        sigma_w=spec.sigma_w,
        sigma_b=spec.sigma_b,
        filter_size=int(spec.extra.get("filter_size", 3)),
        pooling=str(spec.extra.get("pooling", "global-average")),
    )


def add_jitter(k: NDArray, jitter: float) -> NDArray[np.float64]:
    """k + jitter·I (in place on a copy): the white-noise part of the prior."""
    out = np.array(k, dtype=np.float64, copy=True)
    out[np.diag_indices_from(out)] += float(jitter)
    return out

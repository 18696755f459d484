"""A Monte-Carlo kernel for any architecture: the second moment of M random initialisations.

k̂(x, x') = (1/M) Σ_m f_m(x) f_m(x'), f_m the network ``factory(s_m)`` with seed
s_m = SeedSequence([seed, m]) — derived from ``seed`` and the draw index only, never from the
data, so the kernel (and hence the prior N(0, k̂ + jitter·I)) is fixed before S is seen and is
a valid PAC-Bayes prior (MATH.md §12). It is the prior "a GP whose covariance is this random
matrix"; no infinite-width limit is claimed. Its rank is at most M (M·C for
``class-average``), so for n > M it is singular: the jitter (white noise, see
:mod:`pacbound.marginal.kernels`) is what makes it positive definite — record both M and the
jitter. Each network is evaluated in eval mode, example by example in batches, so a row of
k̂ depends only on its own input (permuting x permutes k̂).

Readouts (how the C outputs become the GP's output):
``first`` f = out[:, 0]; ``first-minus-second`` f = out[:, 0] − out[:, 1]; ``second-minus-first``
f = out[:, 1] − out[:, 0] (positive iff class 1 wins a two-output argmax; the prior is
symmetric, so either sign gives the same P(U)); ``class-average`` the per-class second moment
averaged over the C classes (the kernel of argmax over C i.i.d. GPs); ``per-class`` a (C, n, n)
stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from pacbound.bounds.validation import check_count
from pacbound.errors import InvalidInputError, NumericalError

READOUTS = ("first", "first-minus-second", "second-minus-first", "class-average", "per-class")
#: Draws whose outputs are stacked before one matrix product updates the kernel.
DRAW_CHUNK = 32


def draw_seed(seed: int, m: int) -> int:
    """The seed of draw m: a 63-bit integer from SeedSequence([seed, m]) (data-independent)."""
    state = np.random.SeedSequence([int(seed), int(m)]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def _outputs(
    net: torch.nn.Module, x: torch.Tensor, batch_size: int, device: str
) -> NDArray[np.float64]:
    net = net.to(device).eval()
    outs = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            out = net(x[s : s + batch_size].to(device))
            outs.append(out.reshape(out.shape[0], -1).to("cpu", torch.float64).numpy())
    return np.concatenate(outs, axis=0)


def _readout(out: NDArray, readout: str) -> NDArray:
    """(n, C) outputs → (n, R) columns whose second moment is the kernel (R = 1 or C)."""
    need = 2 if "second" in readout else 1
    if out.shape[1] < need:
        raise InvalidInputError(
            f"readout {readout!r} needs ≥ {need} outputs, the network has {out.shape[1]}",
            param="readout",
        )
    if readout == "first":
        return out[:, :1]
    if readout == "first-minus-second":
        return out[:, :1] - out[:, 1:2]
    if readout == "second-minus-first":
        return out[:, 1:2] - out[:, :1]
    return out


def monte_carlo_kernel(
    factory: Callable[[int], torch.nn.Module],
    x: torch.Tensor,
    *,
    draws: int,
    seed: int,
    readout: str = "second-minus-first",
    batch_size: int = 1024,
    device: str = "cpu",
) -> NDArray[np.float64]:
    """(1/M) Σ_m f_m(x) f_m(x)ᵀ over M = ``draws`` seeded initialisations (module docstring).

    Returns (n, n), or (C, n, n) for ``readout="per-class"``. No jitter is added (see
    :func:`pacbound.marginal.kernels.add_jitter`).
    """
    draws = check_count(draws, "draws")
    batch_size = check_count(batch_size, "batch_size")
    if readout not in READOUTS:
        raise InvalidInputError(
            f"readout {readout!r} is unknown; choose one of {', '.join(READOUTS)}",
            param="readout",
        )
    n = int(x.shape[0])
    acc: NDArray | None = None
    for start in range(0, draws, DRAW_CHUNK):
        cols = [
            _readout(_outputs(factory(draw_seed(seed, m)), x, batch_size, device), readout)
            for m in range(start, min(start + DRAW_CHUNK, draws))
        ]
        f = np.stack(cols)  # (draws in chunk, n, R)
        if not np.all(np.isfinite(f)):
            raise NumericalError("a random network produced NaN or Inf outputs")
        part = np.einsum("mir,mjr->rij", f, f)
        acc = part if acc is None else acc + part
    assert acc is not None and acc.shape[1] == n
    acc /= draws
    if readout == "per-class":
        return acc
    return np.asarray(acc.mean(axis=0))


def monte_carlo_kernel_of(
    spec: Any,
    factory: Callable[[int], torch.nn.Module],
    x: Any,
    *,
    batch_size: int = 1024,
    device: str = "cpu",
) -> NDArray[np.float64]:
    """:func:`monte_carlo_kernel` with draws, seed and readout from a ``monte-carlo``
    :class:`~pacbound.marginal.kernels.KernelSpec`'s ``extra`` (``draws``/``M``, ``seed``,
    ``readout``; per-class readouts are refused here: one kernel is needed)."""
    extra = spec.extra
    draws = extra.get("draws", extra.get("M"))
    if draws is None or "seed" not in extra:
        raise InvalidInputError(
            "a monte-carlo kernel spec needs extra['draws'] and extra['seed']", param="kernel"
        )
    readout = str(extra.get("readout", "second-minus-first"))
    if readout == "per-class":
        raise InvalidInputError("readout 'per-class' gives C kernels, not one", param="readout")
    xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)
    k = monte_carlo_kernel(
        factory,
        xt,
        draws=int(draws),
        seed=int(extra["seed"]),
        readout=readout,
        batch_size=batch_size,
        device=device,
    )
    return np.ascontiguousarray(k, dtype=np.float64)

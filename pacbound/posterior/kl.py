"""KL divergence between diagonal Gaussians, in nats, summed in float64.

KL(N(μ_q, diag σ_q²) ‖ N(μ_p, diag σ_p²))
    = ½ Σ_j [ σ_q,j²/σ_p,j² + (μ_q,j − μ_p,j)²/σ_p,j² − 1 + ln(σ_p,j²/σ_q,j²) ]
(MATH.md §4). The certificate uses :func:`gaussian_kl`, which evaluates the sum in float64
and adds a rounding margin so the reported KL is never below the exact value for the
float32 parameters that are actually sampled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from pacbound.errors import NumericalError

_EPS64 = float(torch.finfo(torch.float64).eps)


def _kl_terms(mu_q: Tensor, sigma_q: Tensor, mu_p: Tensor, sigma_p: Tensor) -> Tensor:
    """Per-coordinate ½[ratio + mahalanobis − 1 + log_ratio], each term named as in the formula."""
    variance_ratio = (sigma_q / sigma_p) ** 2
    mahalanobis = ((mu_q - mu_p) / sigma_p) ** 2
    log_det_ratio = 2.0 * (torch.log(sigma_p) - torch.log(sigma_q))
    return 0.5 * (variance_ratio + mahalanobis - 1.0 + log_det_ratio)


def gaussian_kl_differentiable(
    mu_q: Tensor, sigma_q: Tensor, mu_p: Tensor, sigma_p: Tensor | float
) -> Tensor:
    """The KL as a differentiable scalar (for training objectives; float64 accumulation)."""
    sp = torch.as_tensor(sigma_p, dtype=mu_q.dtype, device=mu_q.device)
    return _kl_terms(mu_q, sigma_q, mu_p, sp).sum(dtype=torch.float64)


@torch.no_grad()
def gaussian_kl(
    pairs: Iterable[tuple[Tensor, Tensor, Tensor, Tensor | float]],
) -> float:
    """KL(Q‖P) in nats for a product of diagonal Gaussians given block by block.

    ``pairs`` yields ``(mu_q, sigma_q, mu_p, sigma_p)`` per parameter tensor; ``sigma_p`` may
    be a scalar. Every block is promoted to float64; the total gets a margin for rounding
    (64·eps times the sum of the terms' magnitudes) so it is an upper bound of the exact KL.
    Raises :class:`~pacbound.errors.NumericalError` if the KL is not finite.
    """
    total = 0.0
    magnitude = 0.0
    for mu_q, sigma_q, mu_p, sigma_p in pairs:
        if any(torch.is_tensor(t) and t.is_complex() for t in (mu_q, sigma_q, mu_p, sigma_p)):
            raise NumericalError("a Gaussian block is complex: the KL is over real coordinates")
        mq = mu_q.detach().to(torch.float64)
        sq = sigma_q.detach().to(torch.float64)
        mp = mu_p.detach().to(torch.float64)
        sp = torch.as_tensor(sigma_p, dtype=torch.float64, device=mq.device)
        if torch.any(sq <= 0) or torch.any(sp <= 0):
            raise NumericalError("a posterior or prior standard deviation is not positive")
        terms = _kl_terms(mq, sq, mp, sp)
        total += float(terms.sum())
        magnitude += float(terms.abs().sum()) + float(mq.numel())
    if not math.isfinite(total):
        raise NumericalError(f"KL(Q‖P) is not finite ({total!r}): check the posterior scales")
    return max(total, 0.0) + 64.0 * _EPS64 * magnitude

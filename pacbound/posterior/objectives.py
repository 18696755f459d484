"""Differentiable PAC-Bayes objectives for training a posterior (not for certificates).

The certificate is always computed afterwards, with :mod:`pacbound.bounds` and fresh
Monte-Carlo draws; these objectives only steer the optimisation.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from pacbound.bounds import kl_inv_upper

Objective = Literal["kl", "quad"]


class _KlInverse(torch.autograd.Function):
    """p = kl⁻¹(q, c) with gradients by implicit differentiation of kl(q‖p) = c.

    dp/dc = 1 / ∂kl/∂p and dp/dq = −(∂kl/∂q) / (∂kl/∂p), with
    ∂kl/∂p = (p − q) / (p(1 − p)) and ∂kl/∂q = ln(q/p) − ln((1 − q)/(1 − p)).
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, c: Tensor) -> Tensor:
        qv = float(q.detach().clamp(0.0, 1.0))
        cv = float(c.detach().clamp(min=0.0))
        p = min(float(kl_inv_upper(qv, cv)), 1.0 - 1e-12)
        ctx.save_for_backward(q, c)
        ctx.values = (qv, p)
        return torch.tensor(p, dtype=q.dtype, device=q.device)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor, Tensor]:
        (grad,) = grad_outputs
        _q, _c = ctx.saved_tensors
        qv, p = ctx.values
        qv = min(max(qv, 1e-12), 1.0 - 1e-12)
        dkl_dp = max((p - qv) / (p * (1.0 - p)), 1e-12)
        dkl_dq = math.log(qv / p) - math.log((1.0 - qv) / (1.0 - p))
        return grad * (-dkl_dq / dkl_dp), grad * (1.0 / dkl_dp)


def kl_inverse(q: Tensor, c: Tensor) -> Tensor:
    """Differentiable upper kl inverse (scalar tensors)."""
    result: Tensor = _KlInverse.apply(q, c)
    return result


def bound_objective(
    empirical: Tensor, kl: Tensor, *, n: int, log_term: float, objective: Objective
) -> Tensor:
    """A PAC-Bayes bound as a function of a surrogate risk and the KL (both tensors).

    ``log_term`` is the confidence term, e.g. ln(2√n·G/δ) for a prior-scale grid of size G.
    """
    b = (kl + log_term) / n
    if objective == "kl":
        return kl_inverse(empirical, b.to(empirical.dtype))
    if objective == "quad":
        half = b.to(empirical.dtype) / 2.0
        return (torch.sqrt(empirical + half) + torch.sqrt(half)) ** 2
    raise ValueError(f"unknown objective {objective!r}; valid: 'kl', 'quad'")

"""What a Gaussian certificate says about the user's checkpoint h (MATH.md §11).

The PAC-Bayes certificate bounds the stochastic classifier Q, not h. Next to it:

- **agreement on the bound data** (information): how often a fresh draw of Q predicts
  another class than h on S_bound (one draw per example), and h's own errors there;
- **a certificate for h**: 1[h(x) ≠ y] ≤ 1[h_θ(x) ≠ y] + 1[h(x) ≠ h_θ(x)], so
  L(h) ≤ L(Q) + D(h, Q). On m inputs never used for anything else (held-out inputs with
  their labels ignored, or unlabeled ones), one fresh draw θ_i ~ Q per input makes the
  disagreement indicators i.i.d. Bernoulli(D) (Q depends on the training sample only), so D
  is bounded by the exact binomial tail at δ_D. With the certificate on Q at δ (PAC-Bayes
  and Monte-Carlo parts), the checkpoint's bound holds with probability ≥ 1 − δ − δ_D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.bounds import BoundResult
from pacbound.bounds.checkpoint import disagreement_bound
from pacbound.certify.common import checkpoint_block
from pacbound.posterior.network import StochasticNetwork
from pacbound.posterior.risk import count_disagreements, count_errors


@dataclass(frozen=True)
class CheckpointInputs:
    """Inputs never used for anything else, for bounding D(h, Q): ``source`` is
    ``"heldout"`` (labels ignored) or ``"unlabeled"``."""

    source: str
    x: Tensor


def agreement_on_bound_data(
    network: StochasticNetwork,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    generator: torch.Generator,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """How far the certified Q is from the checkpoint on S_bound (information only)."""
    dis = count_disagreements(
        network, model, x, passes=1, generator=generator, batch_size=batch_size, device=device
    )
    err = count_errors(model, x, y, batch_size=batch_size, device=device)
    return {
        "disagreement_rate": dis.rate,
        "disagreements": dis.errors,
        "examples": dis.evaluations,
        "draws_per_example": 1,
        "checkpoint_errors": err.errors,
        "checkpoint_error_rate": err.rate,
        "note": "measured on the data the certificate uses: information, not a bound",
    }


def checkpoint_certificate(
    network: StochasticNetwork,
    model: nn.Module,
    certificate: BoundResult,
    inputs: CheckpointInputs,
    *,
    delta_certified: float,
    delta_disagreement: float,
    generator: torch.Generator,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """``results["checkpoint"]``: L(h) ≤ L(Q) + D(h, Q) with D bounded on ``inputs``."""
    dis = count_disagreements(
        network,
        model,
        inputs.x,
        passes=1,
        generator=generator,
        batch_size=batch_size,
        device=device,
    )
    bound = disagreement_bound(dis.errors, m=dis.evaluations, delta=delta_disagreement)
    return checkpoint_block(
        certificate,
        bound,
        source=inputs.source,
        disagreements=dis.errors,
        inputs=dis.evaluations,
        certified="Q",
        delta_certified=delta_certified,
        draws_per_input=1,
    )

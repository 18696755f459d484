"""What a Gaussian certificate says about the user's checkpoint h (MATH.md §11).

The PAC-Bayes certificate bounds the stochastic classifier Q, not h. Next to it:

- **agreement on the bound data** (information): how often a fresh draw of Q predicts
  another class than h on S_bound (one draw per example), and h's own errors there;
- **a held-out bound for h** (a separate statement with its own δ), the exact binomial tail
  of h's errors on the held-out set;
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

from pacbound.bounds import BoundResult, DeltaBudget, DeltaPart, test_set_bound
from pacbound.bounds.checkpoint import disagreement_bound
from pacbound.bounds.validation import check_delta
from pacbound.certify.common import checkpoint_block
from pacbound.certify.gaussian_options import GaussianOptions, random_stream
from pacbound.posterior.network import StochasticNetwork
from pacbound.posterior.risk import count_disagreements, count_errors
from pacbound.posterior.streams import DrawStream


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
    stream: DrawStream,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """How far the certified Q is from the checkpoint on S_bound (information only)."""
    dis = count_disagreements(
        network, model, x, passes=1, stream=stream, batch_size=batch_size, device=device
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
    stream: DrawStream,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """``results["checkpoint"]``: L(h) ≤ L(Q) + D(h, Q) with D bounded on ``inputs``."""
    dis = count_disagreements(
        network,
        model,
        inputs.x,
        passes=1,
        stream=stream,
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


def checkpoint_statements(
    network: StochasticNetwork,
    model: nn.Module,
    inputs: CheckpointInputs | None,
    certificate: BoundResult,
    budget: DeltaBudget,
    x_bound: Tensor,
    y_bound: Tensor,
    options: GaussianOptions,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Q's agreement with h on S_bound, and the certificate for h itself when ``inputs``
    never used for anything else are given (each with its own random stream)."""
    agreement = agreement_on_bound_data(
        network,
        model,
        x_bound,
        y_bound,
        stream=random_stream(options.seed, "agreement"),
        batch_size=options.certificate_batch_size,
        device=device,
    )
    if inputs is None:
        return agreement, None
    checkpoint = checkpoint_certificate(
        network,
        model,
        certificate,
        inputs,
        delta_certified=budget.total,
        delta_disagreement=options.resolved_disagreement_delta,
        stream=random_stream(options.seed, "disagreement"),
        batch_size=options.certificate_batch_size,
        device=device,
    )
    return agreement, checkpoint


def heldout_statement(
    model: nn.Module,
    heldout: tuple[Tensor, Tensor],
    options: GaussianOptions,
    device: torch.device,
) -> tuple[BoundResult, DeltaBudget]:
    """The checkpoint's test-set bound on the held-out set (a separate statement, own δ)."""
    hdelta = options.delta if options.heldout_delta is None else options.heldout_delta
    budget = DeltaBudget(
        check_delta(hdelta, "--heldout-delta"),
        (DeltaPart("held-out", hdelta, 1, "binomial tail on the held-out set"),),
    )
    hx, hy = heldout
    count = count_errors(model, hx, hy, batch_size=options.batch_size, device=device)
    return test_set_bound(count.rate, n=count.evaluations, delta=hdelta), budget

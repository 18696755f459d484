"""Risk over a data set, streamed in batches: ``update`` returns counts, ``compute`` averages.

Functional core (counts of errors and of examples, weighted by examples, never by batches)
and a thin loop. The Monte-Carlo estimate of a stochastic network's empirical risk counts
**independent draws actually made**: every example in every pass gets a fresh weight draw
(per-example sampling), so the count is n·K.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pacbound.errors import NumericalError
from pacbound.posterior.network import StochasticNetwork

ProgressHook = Callable[[int], None]


def batch_errors(logits: Tensor, y: Tensor) -> tuple[int, int]:
    """(number of 0-1 errors, number of examples) for one batch."""
    if not torch.all(torch.isfinite(logits)):
        raise NumericalError("the network produced NaN/Inf outputs during risk evaluation")
    return int((logits.argmax(dim=1) != y).sum()), int(y.shape[0])


@dataclass(frozen=True)
class ErrorCount:
    """Errors and independent evaluations; ``rate`` is their ratio."""

    errors: int
    evaluations: int

    @property
    def rate(self) -> float:
        return self.errors / self.evaluations


@torch.no_grad()
def count_errors(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 2048,
    device: torch.device | None = None,
    progress: ProgressHook | None = None,
) -> ErrorCount:
    """0-1 errors of a deterministic model on (x, y)."""
    errors = total = 0
    dev = device or x.device
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(dev, non_blocking=True)
        yb = y[start : start + batch_size].to(dev, non_blocking=True)
        e, m = batch_errors(model(xb), yb)
        errors, total = errors + e, total + m
        if progress is not None:
            progress(m)
    return ErrorCount(errors, total)


@torch.no_grad()
def count_stochastic_errors(
    network: StochasticNetwork,
    x: Tensor,
    y: Tensor,
    *,
    passes: int,
    generator: torch.Generator,
    batch_size: int = 1024,
    device: torch.device | None = None,
    progress: ProgressHook | None = None,
) -> ErrorCount:
    """Errors of n·K independent per-example draws from the posterior (K = ``passes``)."""
    network.set_mode("per_example", generator)
    network.eval()
    errors = total = 0
    dev = device or x.device
    for _ in range(passes):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(dev, non_blocking=True)
            yb = y[start : start + batch_size].to(dev, non_blocking=True)
            e, m = batch_errors(network(xb), yb)
            errors, total = errors + e, total + m
            if progress is not None:
                progress(m)
    return ErrorCount(errors, total)


@torch.no_grad()
def count_disagreements(
    network: StochasticNetwork,
    reference: nn.Module,
    x: Tensor,
    *,
    passes: int,
    generator: torch.Generator,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> ErrorCount:
    """How often n·K independent per-example draws from the posterior predict another class
    than the deterministic ``reference`` (the checkpoint); labels are not needed."""
    network.set_mode("per_example", generator)
    network.eval()
    reference.eval()
    disagreements = total = 0
    dev = device or x.device
    for _ in range(passes):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(dev, non_blocking=True)
            target = reference(xb)
            if not torch.all(torch.isfinite(target)):
                raise NumericalError("the checkpoint produced NaN/Inf outputs")
            d, m = batch_errors(network(xb), target.argmax(dim=1))
            disagreements, total = disagreements + d, total + m
    return ErrorCount(disagreements, total)


def bounded_cross_entropy(logits: Tensor, y: Tensor, p_min: float) -> Tensor:
    """Cross-entropy with log-probabilities clamped at ln p_min, scaled into [0, 1].

    ℓ = −max(ln softmax(z)_y, ln p_min) / ln(1/p_min) (Dziugaite & Roy 2018; Pérez-Ortiz et
    al. 2021). A smooth surrogate of the 0-1 loss for training the posterior.
    """
    log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    return -torch.clamp(log_p, min=math.log(p_min)).mean() / math.log(1.0 / p_min)


@torch.no_grad()
def stochastic_error(
    network: StochasticNetwork,
    x: Tensor,
    y: Tensor,
    *,
    passes: int,
    seed: int,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> float:
    """The posterior's error on (x, y) with per-example draws (e.g. on a test set)."""
    dev = device or torch.device("cpu")
    gen = torch.Generator(device=dev).manual_seed(seed)
    return count_stochastic_errors(
        network, x, y, passes=passes, generator=gen, batch_size=batch_size, device=dev
    ).rate

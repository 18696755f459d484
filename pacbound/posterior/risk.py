"""Risk over a data set, streamed in batches: ``update`` returns counts, ``compute`` averages.

Functional core (counts of errors and of examples, weighted by examples, never by batches)
and a thin loop. The Monte-Carlo estimate of a stochastic network's empirical risk counts
**independent draws actually made**: every example in every pass gets a fresh weight draw
(per-example sampling), so the count is n·K; with per-batch draws (one draw of the whole
parameter vector per batch of B examples, :func:`count_per_batch_errors`) it is K·n/B
(MATH.md §10). The draws are keyed by example (or batch) index
(:mod:`~pacbound.posterior.streams`), so the stochastic counts are sharded over the
processes of a run like the deterministic ones (:func:`shard_batches`) and summed, with the
same integers at any batch size, memory budget and world size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError, NumericalError, PacboundError
from pacbound.parallel import shard
from pacbound.parallel.training import summed_counts
from pacbound.posterior import layers
from pacbound.posterior.network import StochasticNetwork
from pacbound.posterior.streams import DrawKey, DrawStream

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


def shard_batches(n: int, batch_size: int) -> Iterator[slice]:
    """This rank's batches of ``range(n)``: the one-process batches ``[j·B, (j+1)·B)`` that
    fall in its shard (whole batches, :func:`pacbound.parallel.shard` aligned to B), so every
    example is evaluated in the batch it has in one process; all of them in one process."""
    rows = shard(n, align=batch_size)
    for start in range(rows.start, rows.stop, batch_size):
        yield slice(start, min(start + batch_size, rows.stop))


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
    """0-1 errors of a deterministic model on (x, y).

    Each rank counts its shard (:func:`shard_batches`; a streamed data set reads only those
    rows) and the integer counts are summed over ranks, so the count is the same at any
    world size. NaN/Inf outputs on any rank stop every rank (:class:`NumericalError`; under torchrun
    a :class:`~pacbound.parallel.SharedError` with its message and exit code).
    ``progress`` advances by this rank's examples, then by the other ranks' at the end.
    """
    errors = total = 0
    failure: PacboundError | None = None
    dev = device or x.device
    try:
        for rows in shard_batches(int(x.shape[0]), batch_size):
            xb = x[rows].to(dev, non_blocking=True)
            yb = y[rows].to(dev, non_blocking=True)
            e, m = batch_errors(model(xb), yb)
            errors, total = errors + e, total + m
            if progress is not None:
                progress(m)
    except PacboundError as exc:
        failure = exc
    all_errors, all_total = summed_counts((errors, total), failure)
    if progress is not None and all_total > total:
        progress(all_total - total)
    return ErrorCount(all_errors, all_total)


def _summed(
    errors: int, total: int, failure: PacboundError | None, progress: ProgressHook | None
) -> ErrorCount:
    """This rank's counts summed over ranks (a failure on any rank stops every rank,
    :func:`~pacbound.parallel.training.summed_counts`); ``progress`` then advances by the
    other ranks' examples."""
    all_errors, all_total = summed_counts((errors, total), failure)
    if progress is not None and all_total > total:
        progress(all_total - total)
    return ErrorCount(all_errors, all_total)


@torch.no_grad()
def count_stochastic_errors(
    network: StochasticNetwork,
    x: Tensor,
    y: Tensor,
    *,
    passes: int,
    stream: DrawStream,
    batch_size: int = 1024,
    device: torch.device | None = None,
    progress: ProgressHook | None = None,
) -> ErrorCount:
    """Errors of n·K independent per-example draws from the posterior (K = ``passes``, each
    the next pass of ``stream``). Example i's draw in a pass is keyed by i
    (:mod:`~pacbound.posterior.streams`): this process counts its shard of the one-process
    batches (:func:`shard_batches`) and the counts are summed over the processes, so the
    result is the same for any batch size, memory budget and number of processes (and
    every logit is computed exactly as in one process at the same batch size)."""
    network.eval()
    errors = total = 0
    failure: PacboundError | None = None
    dev = device or x.device
    try:
        for _ in range(passes):
            key = stream.next_pass()
            for batch in shard_batches(int(x.shape[0]), batch_size):
                xb = x[batch].to(dev, non_blocking=True)
                yb = y[batch].to(dev, non_blocking=True)
                network.set_mode("per_example", key.at(batch.start))
                e, m = batch_errors(network(xb), yb)
                errors, total = errors + e, total + m
                if progress is not None:
                    progress(m)
    except PacboundError as exc:
        failure = exc
    return _summed(errors, total, failure, progress)


@contextmanager
def one_draw(network: StochasticNetwork, key: DrawKey, batch: int) -> Iterator[None]:
    """Within: every posterior mean μ replaced in place by one draw θ = μ + σ ⊙ ε of the
    whole parameter vector (ε keyed by the pass ``key``, the batch index and each
    parameter's name), restored bit for bit on exit. Evaluated in ``"mean"`` mode, every
    use of every weight sees θ."""
    means = list({id(slot.mu): slot for slot in network.slots}.values())  # ties: one draw
    saved = [slot.mu.detach().clone() for slot in means]
    try:
        for slot in means:
            mu = slot.mu
            noise = key.batch_noise(batch, slot.name, mu.shape, mu)
            mu.add_(torch.exp(slot.log_sigma) * noise)
        yield
    finally:
        for slot, value in zip(means, saved, strict=True):
            slot.mu.copy_(value)


def _check_all_drawn(network: StochasticNetwork) -> None:
    """Every posterior mean the network computes with in ``"mean"`` mode (its ``*_mu``
    parameters) is a slot's μ: none stays a point mass when the means are replaced by a
    draw."""
    covered = {id(slot.mu) for slot in network.slots}
    stray = [n for n, p in network.named_parameters() if n.endswith("_mu") and id(p) not in covered]
    if stray:
        raise InvalidInputError(
            f"per-batch draws cannot cover the posterior means {stray[:4]}: they are no "
            "parameter slot of the stochastic network"
        )


@torch.no_grad()
def count_per_batch_errors(
    network: StochasticNetwork,
    x: Tensor,
    y: Tensor,
    *,
    passes: int,
    stream: DrawStream,
    batch: int,
    device: torch.device | None = None,
    progress: ProgressHook | None = None,
) -> ErrorCount:
    """Errors of K·n/B per-batch draws (K = ``passes``): one θ ~ Q per batch of exactly
    ``batch`` = B examples (B must divide n; batch j holds examples [j·B, (j+1)·B)), fresh
    for every batch of every pass, keyed by the pass and j. Each process counts its shard
    of whole batches; the counts are summed over the processes.

    ``evaluations`` is K·n (the examples evaluated, so ``rate`` is the mean of the batch
    error rates); the number of independent draws is K·n/B (MATH.md §10).
    """
    n = int(x.shape[0])
    if batch < 1 or n % batch:
        raise InvalidInputError(f"per-batch draws need a batch size dividing n = {n}, not {batch}")
    _check_all_drawn(network)
    network.set_mode("mean")
    network.eval()
    errors = total = 0
    failure: PacboundError | None = None
    dev = device or x.device
    try:
        for _ in range(passes):
            key = stream.next_pass()
            for part in shard_batches(n, batch):
                xb = x[part].to(dev, non_blocking=True)
                yb = y[part].to(dev, non_blocking=True)
                with one_draw(network, key, part.start // batch):
                    e, m = batch_errors(network(xb), yb)
                errors, total = errors + e, total + m
                if progress is not None:
                    progress(m)
    except PacboundError as exc:
        failure = exc
    return _summed(errors, total, failure, progress)


def per_example_bytes(network: StochasticNetwork, batch: int) -> int:
    """An estimate of the per-example weight tensors one batch of ``batch`` examples needs
    with per-example draws, as the memory budget counts them
    (:func:`pacbound.posterior.network.set_max_memory`): ``batch`` × the weight copies × the
    elements each example draws in the layers that draw whole weights per example
    (``budgeted``: convolutions, the functional sampler), at the weights' element size.
    Other layers (local reparameterization, per-use rows, affine vectors) count none."""
    copies = int(getattr(layers, "WEIGHT_COPIES", 1))
    total = 0
    for module in network.gaussian_modules():
        budgeted = getattr(module, "budgeted", not isinstance(module, layers.GaussianLinear))
        if not budgeted:
            continue
        means = [p for n, p in module.named_parameters(recurse=False) if n.endswith("_mu")]
        own = getattr(module, "per_example_elements", None)
        elements = int(own()) if callable(own) else sum(p.numel() for p in means)
        size = means[0].element_size() if means else 4
        total += copies * elements * size
    return batch * total


def per_example_fits(network: StochasticNetwork, batch: int, budget: int | None) -> bool:
    """Whether the per-example draws of one batch fit in ``budget`` bytes (``None``: no
    budget, always); ``--mc-draws auto`` uses per-batch draws when they do not."""
    return budget is None or per_example_bytes(network, batch) <= budget


@torch.no_grad()
def count_disagreements(
    network: StochasticNetwork,
    reference: nn.Module,
    x: Tensor,
    *,
    passes: int,
    stream: DrawStream,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> ErrorCount:
    """How often n·K independent per-example draws from the posterior predict another class
    than the deterministic ``reference`` (the checkpoint); labels are not needed. Keyed,
    sharded and summed as :func:`count_stochastic_errors`."""
    network.eval()
    reference.eval()
    disagreements = total = 0
    failure: PacboundError | None = None
    dev = device or x.device
    try:
        for _ in range(passes):
            key = stream.next_pass()
            for batch in shard_batches(int(x.shape[0]), batch_size):
                xb = x[batch].to(dev, non_blocking=True)
                target = reference(xb)
                if not torch.all(torch.isfinite(target)):
                    raise NumericalError("the checkpoint produced NaN/Inf outputs")
                network.set_mode("per_example", key.at(batch.start))
                d, m = batch_errors(network(xb), target.argmax(dim=1))
                disagreements, total = disagreements + d, total + m
    except PacboundError as exc:
        failure = exc
    return _summed(disagreements, total, failure, None)


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
    """The posterior's error on (x, y) with per-example draws (e.g. on a test set), from
    the stream (``seed``, ``"heldout"``)."""
    dev = device or torch.device("cpu")
    stream = DrawStream(seed, "heldout")
    return count_stochastic_errors(
        network, x, y, passes=passes, stream=stream, batch_size=batch_size, device=dev
    ).rate

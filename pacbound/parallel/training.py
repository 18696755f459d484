"""Data-parallel training and counting over the current world; the identity in one process.

Every rank takes its contiguous share of each *global* mini-batch (the batch order is the
one-process order), computes its part of the mean loss, and the gradients are averaged over
ranks before the step, so every rank applies the same update and the weights stay equal on
all ranks. In one process nothing here communicates and every value is bit for bit the one
of the one-process code. At world size > 1 the trained weights equal the one-process ones
only up to floating-point reduction order (the batch's sum is split between ranks), and
layers that use batch statistics in train mode (BatchNorm) see the rank's share of the batch.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pacbound.errors import PacboundError
from pacbound.parallel.collectives import _collective, collectively, sum_ints
from pacbound.parallel.shards import shard
from pacbound.parallel.world import current


@dataclass(frozen=True)
class Share:
    """This rank's rows of one global mini-batch: ``rows`` (indices into the data), their
    ``positions`` in the batch (a contiguous run) and the weight m_r / B of the rank's mean
    loss in the batch's mean loss (exactly 1.0 in one process)."""

    rows: Tensor
    positions: slice
    weight: float

    @property
    def empty(self) -> bool:
        return int(self.rows.numel()) == 0


def batch_share(indices: Tensor) -> Share:
    """This rank's contiguous share of the global mini-batch ``indices`` (the whole batch in
    one process)."""
    size = int(indices.numel())
    part = shard(size)
    rows = indices if len(part) == size else indices[part.start : part.stop]
    return Share(rows, slice(part.start, part.stop), len(part) / size if size else 0.0)


def _reduce_sum(t: Tensor) -> Tensor:
    out = t.detach().clone()
    with _collective("a sum of training losses or gradients"):
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _GlobalSum(torch.autograd.Function):
    """Forward: the sum over ranks; backward: the sum over ranks of the incoming gradients
    (the adjoint of an all-reduce)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        return _reduce_sum(t)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Tensor:
        return _reduce_sum(grads[0])


class _GradientMean(torch.autograd.Function):
    """Forward: the identity; backward: the incoming gradient averaged over ranks."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        return t.clone()

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Tensor:
        return _reduce_sum(grads[0]) / current().world_size


def global_sum(t: Tensor) -> Tensor:
    """Σ over ranks of ``t``, differentiable (each rank's gradient is the sum of all ranks'
    incoming gradients); ``t`` itself in one process.

    For a loss f(Σ_r t_r) computed alike on every rank, rank r's gradient of t_r is W·f′; after
    :func:`average_gradients` (÷W) the parameters get exactly ∂f/∂θ of the global value.
    """
    if not current().distributed:
        return t
    result: Tensor = _GlobalSum.apply(t)
    return result


def gradient_mean(t: Tensor) -> Tensor:
    """``t`` unchanged, but its gradient is averaged over ranks on the way back (for a
    tensor trained by a loop that does not call :func:`average_gradients`); ``t`` itself in
    one process."""
    if not current().distributed:
        return t
    result: Tensor = _GradientMean.apply(t)
    return result


def shared_loss(local_mean: Tensor | None, share: Share, *, like: Tensor) -> Tensor:
    """The global mini-batch's mean loss from this rank's mean loss over its share
    (``None`` for a rank with no rows of this batch): Σ_r (m_r/B)·mean_r, the same value on
    every rank, differentiable (:func:`global_sum`). In one process ``local_mean`` times
    the weight 1.0, which is exact. ``like`` (a parameter) gives an empty share's dtype and
    device: the loss's."""
    if not current().distributed:
        assert local_mean is not None
        return local_mean * share.weight
    if local_mean is None:
        # a leaf that requires a gradient: this rank's backward still runs the collective
        local_mean = torch.zeros((), dtype=like.dtype, device=like.device, requires_grad=True)
    return global_sum(local_mean * share.weight)


def average_gradients(parameters: Iterable[Tensor]) -> None:
    """After ``backward``: every parameter's ``.grad`` replaced by its mean over ranks, in
    one all-reduce per (dtype, device). A parameter without a gradient on some rank counts
    as zero there; one without a gradient on every rank keeps ``None`` (the optimizer skips
    it, as in one process). Nothing in one process."""
    world = current()
    if not world.distributed:
        return
    params = [p for p in parameters if p.requires_grad]
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    has_grad = sum_ints([0 if p.grad is None else 1 for p in params])
    present = {id(p) for p, count in zip(params, has_grad, strict=True) if count > 0}
    for members in groups.values():
        members = [p for p in members if id(p) in present]
        if not members:
            continue
        flat = torch.cat(
            [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in members]
        )
        with _collective("a gradient average"):
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world.world_size)
        offset = 0
        for p in members:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """After training in train mode, where each rank updated the buffers from its share of
    the batches: floating-point buffers (BatchNorm running statistics) replaced by their
    mean over ranks, integer buffers (step counters) by rank 0's (rank 0 has a share of
    every batch, so it counts as one process does), so every rank holds the same model.
    Nothing in one process."""
    world = current()
    if not world.distributed:
        return
    with _collective("an average of buffers"):
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(world.world_size)
            else:
                dist.broadcast(buffer, src=0)


def rank_seed(seed: int) -> int:
    """The seed of this rank's training noise: ``seed`` itself on rank 0 (so one process is
    unchanged), a distinct 63-bit seed derived from (seed, rank) on the other ranks, so that
    the ranks' stochastic forward passes draw independent noise instead of the same rows."""
    rank = current().rank
    if rank == 0:
        return seed
    digest = hashlib.blake2b(f"pacbound-training/{seed}/{rank}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def summed_counts(counts: Sequence[int], failure: PacboundError | None) -> tuple[int, ...]:
    """``counts`` summed over ranks, after every rank learned whether any rank failed while
    counting (``failure``: its error, e.g. NaN outputs in its shard): then every rank raises
    that rank's error as a :class:`~pacbound.parallel.failures.SharedError` (same message
    and exit code, printed once), so no rank waits for one that stopped. In one process:
    ``failure`` itself is raised, or the counts returned."""
    if not current().distributed:
        if failure is not None:
            raise failure
        return tuple(int(c) for c in counts)
    *totals, failed = sum_ints([*counts, 0 if failure is None else 1])
    if failed:
        collectively(functools.partial(_reraise, failure))
    return tuple(totals)


def _reraise(failure: PacboundError | None) -> None:
    if failure is not None:
        raise failure

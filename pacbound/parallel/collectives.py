"""Collectives over the current world; each is the identity in a one-process run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from pacbound.errors import InvalidInputError
from pacbound.parallel.world import current


def sum_ints(values: Sequence[int]) -> tuple[int, ...]:
    """Integer counts summed over ranks (int64: exact, independent of the reduction order)."""
    world = current()
    if not world.distributed:
        return tuple(int(v) for v in values)
    device = torch.device("cuda", torch.cuda.current_device()) if world.backend == "nccl" else None
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tuple(int(v) for v in t.tolist())


def all_gather_objects(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (picklable objects)."""
    world = current()
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, value)
    return out


def agree(what: str, value: str, *, param: str | None = None) -> None:
    """Refuse (bad input) unless every rank holds the same ``value`` (e.g. a file's sha256),
    naming the first rank that differs from rank 0."""
    values = all_gather_objects(value)
    for rank, other in enumerate(values):
        if other != values[0]:
            raise InvalidInputError(
                f"{what} differs between ranks: rank {rank} has {other!r}, rank 0 has "
                f"{values[0]!r}; every rank must read the same input",
                param=param,
            )


def all_reduce_mean_(tensors: Iterable[Tensor]) -> None:
    """Average gradients (or any tensors) over ranks in place; nothing in one process."""
    world = current()
    if not world.distributed:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world.world_size)

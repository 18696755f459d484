"""Collectives over the current world; each is the identity in a one-process run.

A collective that breaks because another rank is gone (its connection closed, the
collective timeout passed) raises :class:`~pacbound.parallel.failures.PeerFailedError`
(exit 143) instead of the backend's raw error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from pacbound.errors import EXIT_BAD_INPUT, PacboundError
from pacbound.parallel.failures import SharedError, is_peer_failure, peer_failed
from pacbound.parallel.world import current

T = TypeVar("T")


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a backend error of a broken collective into :class:`PeerFailedError`."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:
        if not is_peer_failure(exc):
            raise
        raise peer_failed(exc, current().rank, what) from None


def sum_ints(values: Sequence[int]) -> tuple[int, ...]:
    """Integer counts summed over ranks (int64: exact, independent of the reduction order)."""
    world = current()
    if not world.distributed:
        return tuple(int(v) for v in values)
    device = torch.device("cuda", torch.cuda.current_device()) if world.backend == "nccl" else None
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    with _collective("a sum of counts"):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return tuple(int(v) for v in t.tolist())


def all_gather_objects(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (picklable objects)."""
    world = current()
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.world_size
    with _collective("an exchange between ranks"):
        dist.all_gather_object(out, value)
    return out


def agree(what: str, value: str, *, param: str | None = None) -> None:
    """Refuse (bad input, exit 3, on every rank) unless every rank holds the same ``value``
    (e.g. a file's sha256), naming the first rank that differs from rank 0."""
    agree_all({what: value}, param=param)


def agree_all(values: Mapping[str, str], *, param: str | None = None) -> None:
    """:func:`agree` for several named values in one exchange; the first named value (in
    rank 0's order) some rank differs on is refused."""
    every = all_gather_objects(dict(values))
    for what, expected in every[0].items():
        for rank, theirs in enumerate(every):
            other = theirs.get(what)
            if other != expected:
                raise SharedError(
                    f"{what} differs between ranks: rank {rank} has {other!r}, rank 0 has "
                    f"{expected!r}; every rank must read the same input",
                    exit_code=EXIT_BAD_INPUT,
                    param=param,
                )


def collectively(step: Callable[[], T]) -> T:
    """Run ``step`` on every rank and compare outcomes: if it raised a pacbound error on any
    rank, every rank raises a :class:`SharedError` with the first failing rank's message
    (naming that rank unless it is rank 0) and exit code, so that the run ends alike
    everywhere and the line is printed once (by rank 0). In one process: ``step()``."""
    world = current()
    if not world.distributed:
        return step()
    try:
        result, failure = step(), None
    except PacboundError as exc:
        result, failure = None, (str(exc), exc.exit_code, getattr(exc, "param", None))
    _raise_first(all_gather_objects(failure))
    return result  # type: ignore[return-value]  # every rank succeeded


def on_writer(step: Callable[[], None]) -> None:
    """Run ``step`` (a write) on rank 0 only, once every rank has come this far (a rank that
    failed before stops the writer too: no file); every rank then raises the writer's pacbound
    error, if any, as a :class:`SharedError`, or goes on together. In one process: ``step()``."""
    world = current()
    if not world.distributed:
        step()
        return
    all_gather_objects(None)  # every rank has finished its work
    failure = None
    if world.is_writer:
        try:
            step()
        except PacboundError as exc:
            failure = (str(exc), exc.exit_code, getattr(exc, "param", None))
    _raise_first(all_gather_objects(failure))


def _raise_first(outcomes: list[tuple[str, int, str | None] | None]) -> None:
    for rank, outcome in enumerate(outcomes):
        if outcome is not None:
            message, code, param = outcome
            where = f" [rank {rank} of {len(outcomes)}]" if rank else ""
            raise SharedError(message + where, exit_code=code, param=param)


def all_reduce_mean_(tensors: Iterable[Tensor]) -> None:
    """Average gradients (or any tensors) over ranks in place; nothing in one process."""
    world = current()
    if not world.distributed:
        return
    with _collective("a gradient average"):
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(world.world_size)

"""Scale-out runtime: the process group torchrun sets up, shards of the data, collectives.

A plain run is the world-size-1 case of the same code: :func:`current` is then a
one-process :class:`World` and every collective is the identity. Below every package that
computes (models, io, posterior, …): it depends on ``torch.distributed`` and
:mod:`pacbound.errors` only.
"""

from pacbound.parallel.collectives import agree, all_gather_objects, all_reduce_mean_, sum_ints
from pacbound.parallel.shards import shard
from pacbound.parallel.world import World, current, init_from_environment, shutdown

__all__ = [
    "World",
    "agree",
    "all_gather_objects",
    "all_reduce_mean_",
    "current",
    "init_from_environment",
    "shard",
    "shutdown",
    "sum_ints",
]

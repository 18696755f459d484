"""Scale-out runtime: the process group torchrun sets up, shards of the data, collectives.

A plain run is the world-size-1 case of the same code: :func:`current` is then a
one-process :class:`World` and every collective is the identity. Below every package that
computes (models, io, posterior, …): it depends on ``torch.distributed`` and
:mod:`pacbound.errors` only. How failures end every rank: :mod:`pacbound.parallel.failures`.
"""

from pacbound.parallel.collectives import (
    agree,
    agree_all,
    all_gather_objects,
    all_reduce_mean_,
    collectively,
    on_writer,
    sum_ints,
)
from pacbound.parallel.failures import PeerFailedError, SharedError, is_peer_failure
from pacbound.parallel.shards import shard
from pacbound.parallel.world import (
    World,
    current,
    environment_rank,
    init_from_environment,
    launched_by_torchrun,
    shutdown,
)

__all__ = [
    "PeerFailedError",
    "SharedError",
    "World",
    "agree",
    "agree_all",
    "all_gather_objects",
    "all_reduce_mean_",
    "collectively",
    "current",
    "environment_rank",
    "init_from_environment",
    "is_peer_failure",
    "launched_by_torchrun",
    "on_writer",
    "shard",
    "shutdown",
    "sum_ints",
]

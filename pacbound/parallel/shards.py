"""Which examples a rank works on: a contiguous range, the same for every batch size."""

from __future__ import annotations

from pacbound.parallel.world import World, current


def shard(n: int, world: World | None = None, *, align: int = 1) -> range:
    """Rank r's contiguous share of ``range(n)``: whole blocks of ``align`` examples, the
    blocks split as evenly as possible, lower ranks first. The union over ranks is
    ``range(n)`` in order, so integer counts summed over ranks equal the one-process count."""
    world = world or current()
    if n < 0 or align < 1:
        raise ValueError(f"shard: n must be >= 0 and align >= 1, got n={n}, align={align}")
    blocks = -(-n // align)
    per, extra = divmod(blocks, world.world_size)
    first = world.rank * per + min(world.rank, extra)
    last = first + per + (1 if world.rank < extra else 0)
    return range(min(n, first * align), min(n, last * align))

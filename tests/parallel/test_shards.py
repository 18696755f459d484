"""Shards: every example on exactly one rank, in order, whole blocks, as even as possible."""

from __future__ import annotations

import itertools

import pytest

from pacbound.parallel import World, shard


def _shards(n: int, size: int, align: int = 1) -> list[range]:
    return [shard(n, World(rank=r, world_size=size), align=align) for r in range(size)]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 5, 16, 17, 400, 1001])
@pytest.mark.parametrize("align", [1, 3, 8])
def test_union_is_range_n_in_rank_order(n: int, size: int, align: int) -> None:
    parts = _shards(n, size, align)
    assert [i for part in parts for i in part] == list(range(n))
    # contiguous: each starts where the previous ended
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))


@pytest.mark.parametrize(("n", "size", "align"), [(17, 3, 4), (1001, 4, 8), (400, 7, 3)])
def test_blocks_are_aligned_and_balanced(n: int, size: int, align: int) -> None:
    parts = _shards(n, size, align)
    # every shard but the last non-empty one starts and ends on a block boundary
    assert all(p.start % align == 0 for p in parts if len(p))
    blocks = [-(-len(p) // align) for p in parts]
    assert max(blocks) - min(blocks) <= 1
    assert blocks == sorted(blocks, reverse=True)  # lower ranks take the extra blocks


def test_known_split() -> None:
    assert _shards(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]
    assert _shards(10, 3, align=4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert _shards(2, 4) == [range(0, 1), range(1, 2), range(2, 2), range(2, 2)]


def test_one_process_gets_everything() -> None:
    assert shard(123) == range(123)


@pytest.mark.parametrize(("n", "align"), [(-1, 1), (5, 0)])
def test_bad_arguments(n: int, align: int) -> None:
    with pytest.raises(ValueError, match="n must be >= 0 and align >= 1"):
        shard(n, align=align)

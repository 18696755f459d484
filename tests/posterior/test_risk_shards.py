"""Deterministic 0-1 error counts on shards (issue #14): every rank counts the one-process
batches of its shard, the integer counts are summed, so the count is the one-process count
at any world size, and only the rank's own rows are read."""

from __future__ import annotations

import math

import pytest
import torch

from pacbound.certify.compressed_checkpoint import compare_predictions
from pacbound.errors import EXIT_NUMERICAL, NumericalError
from pacbound.parallel import World, shard
from pacbound.parallel import world as world_module
from pacbound.posterior.risk import count_errors, shard_batches
from tests.parallel._workers import BATCH_SIZES, NAN_ROW, N, Recording, convnet, data, group_results


def _reference(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """The count by the one-process formula, one example at a time."""
    with torch.no_grad():
        return sum(int(model(x[i : i + 1]).argmax(1)[0] != y[i]) for i in range(x.shape[0]))


def test_one_process_counts_every_row_once_as_before() -> None:
    x, y = data(N)
    model = convnet(1).eval()
    expected = _reference(model, x, y)
    assert expected == 142  # the count before sharding (seeded model and data)
    for b in (1, *BATCH_SIZES):
        recorded = Recording(x)
        count = count_errors(model, recorded, y, batch_size=b)  # type: ignore[arg-type]
        assert (count.errors, count.evaluations) == (expected, N)
        assert sorted(recorded.read) == list(range(N))


def test_progress_reaches_n_in_one_process() -> None:
    x, y = data(N)
    seen: list[int] = []
    count_errors(convnet(1).eval(), x, y, batch_size=64, progress=seen.append)
    assert seen == [64, 64, 64, 38]


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_shard_batches_are_the_one_process_batches_split_between_ranks(
    monkeypatch: pytest.MonkeyPatch, world_size: int, batch_size: int
) -> None:
    """The ranks' batches, in rank order, are exactly the one-process batches."""
    batches = []
    for rank in range(world_size):
        world = World(rank=rank, world_size=world_size)
        monkeypatch.setattr(world_module, "_CURRENT", world)
        mine = list(shard_batches(N, batch_size))
        assert all(b.start in shard(N, world, align=batch_size) for b in mine)
        batches += [(b.start, b.stop) for b in mine]
    one = [(s, min(s + batch_size, N)) for s in range(0, N, batch_size)]
    assert batches == one


def test_nan_outputs_are_refused_in_one_process() -> None:
    x, y = data(N)
    x[NAN_ROW, 0, 0, 0] = math.nan
    with pytest.raises(NumericalError, match="NaN/Inf outputs during risk evaluation"):
        count_errors(convnet(1).eval(), x, y, batch_size=64)


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_real_process_group_counts_equal_one_process(world_size: int) -> None:
    x, y = data(N)
    model, other = convnet(1).eval(), convnet(2).eval()
    expected = {}
    for b in BATCH_SIZES:
        c = count_errors(model, x, y, batch_size=b)
        a = compare_predictions(model, other, x, y, batch_size=b)
        expected[b] = (c.errors, c.evaluations, a.n, a.disagreements, a.errors)
    assert expected[64][:2] == (142, N)
    world = [World(rank=r, world_size=world_size) for r in range(world_size)]
    for rank, result in enumerate(group_results(world_size)):
        out = result["counting"]
        assert out["rank"] == rank
        for b in BATCH_SIZES:
            errors, total, read, *agreement = out[b]
            assert (errors, total, *agreement) == expected[b]
            assert read == list(shard(N, world[rank], align=b))  # its own rows only
        # the NaN is in one rank's shard; every rank stops with that rank's error (exit 4)
        owner = next(r for r in range(world_size) if NAN_ROW in shard(N, world[r], align=7))
        where = f" [rank {owner} of {world_size}]" if owner else ""
        message = "the network produced NaN/Inf outputs during risk evaluation" + where
        assert out["nan"] == ("SharedError", EXIT_NUMERICAL, message)

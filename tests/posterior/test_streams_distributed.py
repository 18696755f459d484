"""The keyed draws in real process groups (issue #14): 2 and 3 gloo processes, each counting
its shard, give the Monte-Carlo counts and the whole Gaussian ``results`` block of one
process, byte for byte."""

from __future__ import annotations

import json
import math
import os
import socket
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from pacbound import parallel
from pacbound.certify.gaussian import certify_gaussian
from pacbound.certify.gaussian_options import GaussianOptions
from pacbound.posterior.network import build_stochastic_network
from pacbound.posterior.normalization import ChannelAffine
from pacbound.posterior.priors import PriorMean, ScaleGrid
from pacbound.posterior.risk import (
    count_disagreements,
    count_per_batch_errors,
    count_stochastic_errors,
)
from pacbound.posterior.streams import DrawStream


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        ChannelAffine(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 3),
    ).eval()


def _data(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 5, 5, generator=gen)
    return x, (x.mean(dim=(1, 2, 3)) > 0).long()


def _everything() -> dict[str, Any]:
    """The counts and the certificate of this process's world."""
    torch.set_num_threads(1)
    model = _model()
    x, y = _data()
    net = build_stochastic_network(model)
    net.set_log_sigma(math.log(0.4))
    mc = count_stochastic_errors(net, x, y, passes=2, stream=DrawStream(3, "mc"), batch_size=48)
    dis = count_disagreements(net, model, x, passes=1, stream=DrawStream(3, "d"), batch_size=7)
    pb = count_per_batch_errors(net, x, y, passes=2, stream=DrawStream(3, "mc"), batch=25)
    options = GaussianOptions(
        prior=PriorMean.ZERO,
        prior_scales=ScaleGrid.log_spaced(1e-2, 1.0, 21),
        mc_passes=2,
        search_examples=64,
        batch_size=32,
    )
    cert = certify_gaussian(model, x, y, options=options)
    return {
        "counts": [(c.errors, c.evaluations) for c in (mc, dis, pb)],
        "results": json.dumps(cert.to_dict(), sort_keys=True, allow_nan=False),
    }


def _worker(rank: int, world_size: int, port: int, queue: Any) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    parallel.init_from_environment(torch.device("cpu"))
    try:
        queue.put((rank, _everything()))
    finally:
        parallel.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("world_size", [2, 3])
def test_gloo_ranks_give_the_one_process_counts_and_results(world_size: int) -> None:
    alone = _everything()
    assert parallel.current().world_size == 1
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(world_size, _free_port(), queue), nprocs=world_size)
    ranks = dict(queue.get() for _ in range(world_size))
    assert sorted(ranks) == list(range(world_size))
    for rank, got in ranks.items():
        assert got == alone, rank  # every rank holds the summed counts and the same block
    assert alone["counts"][0][1] == 400 and 0 < alone["counts"][0][0] < 400

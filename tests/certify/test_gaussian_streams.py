"""The whole Gaussian ``results`` block does not depend on how the examples are batched or
chunked (issue #14): every draw is keyed by its example's place in the data set."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from pacbound.certify.gaussian import certify_gaussian
from pacbound.certify.gaussian_options import GaussianOptions
from pacbound.posterior.normalization import ChannelAffine
from pacbound.posterior.priors import PriorMean, ScaleGrid


def _task() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), ChannelAffine(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3)
    ).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(150, 1, 4, 4, generator=gen)
    return model, x, (x[:, 0, 0, 0] > 0).long() + (x[:, 0, 1, 1] > 1).long()


@pytest.mark.parametrize("mc_draws", ["per-example", "per-batch"])
def test_results_block_is_the_same_for_any_batch_size_and_budget(mc_draws: str) -> None:
    """Batch sizes 1, 7, 64, 1000 (per-example draws; per-batch draws fix their batches by
    the batch size, so there only the budget varies) and two memory budgets (a chunk of
    two examples, and the default): one results block, byte for byte."""
    model, x, y = _task()
    base = GaussianOptions(
        prior=PriorMean.ZERO,
        prior_scales=ScaleGrid.log_spaced(1e-2, 1.0, 21),
        mc_passes=2,
        search_examples=40,
        batch_size=64,
        mc_draws=mc_draws,
    )
    per_example = 3 * 4 * (3 * 9 + 3)  # the conv's weight copies, float32
    small = 2 * per_example
    runs = [(1, None), (7, small), (64, small), (64, None), (1000, None)]
    if mc_draws == "per-batch":
        runs = [(50, small), (50, None)]
    blocks = set()
    for batch_size, budget in runs:
        options = replace(base, batch_size=batch_size, max_memory=budget)
        cert = certify_gaussian(model, x, y, options=options)
        blocks.add(json.dumps(cert.to_dict(), sort_keys=True, allow_nan=False))
    assert len(blocks) == 1
    (block,) = blocks
    results = json.loads(block)
    assert results["empirical_risk"]["draws_per"] == mc_draws.removeprefix("per-")
    assert 0.0 < results["empirical_risk"]["estimate"] < 1.0 and 0.0 < results["bound"] < 1.0

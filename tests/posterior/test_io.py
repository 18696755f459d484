"""Posterior files: round trip, KL recomputed from the file, bad files refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.io import load_posterior, save_posterior
from pacbound.posterior.kl import gaussian_kl
from pacbound.posterior.network import build_stochastic_network


def test_round_trip_and_kl(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    net = build_stochastic_network(model, log_sigma_init=-2.0)
    priors = [torch.zeros_like(p) for p in model.parameters()]
    path = tmp_path / "post.safetensors"
    save_posterior(path, net, priors, 0.1)
    saved = load_posterior(path)
    assert saved.names == tuple(n for n, _ in model.named_parameters())
    for slot in net.slots:
        assert torch.equal(saved.mu[slot.name], slot.mu.detach())
        assert torch.equal(saved.sigma[slot.name], torch.exp(slot.log_sigma.detach()))
    expected = gaussian_kl(
        (s.mu, torch.exp(s.log_sigma), p, 0.1) for s, p in zip(net.slots, priors, strict=True)
    )
    assert saved.kl() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["post.safetensors"]  # no temp files left


def test_bad_posterior_files(tmp_path: Path) -> None:
    text = tmp_path / "x.safetensors"
    text.write_text("hello")
    with pytest.raises(InvalidInputError, match="not a valid posterior"):
        load_posterior(text)
    with pytest.raises(InvalidInputError, match="cannot read"):
        load_posterior(tmp_path / "missing.safetensors")

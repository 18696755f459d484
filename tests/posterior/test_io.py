"""Posterior files: round trip bit for bit, KL recomputed from the file, bad files refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save
from torch import nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.families import FAMILIES
from pacbound.posterior.io import load_posterior, posterior_bytes, read_posterior
from pacbound.posterior.kl import gaussian_kl
from pacbound.posterior.network import build_stochastic_network


def _network(log_sigma: float = -2.0) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    return model, build_stochastic_network(model, log_sigma_init=log_sigma)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_round_trip_and_kl(tmp_path: Path, name: str) -> None:
    model, net = _network()
    with torch.no_grad():  # a per-weight σ that exp/log would not round-trip exactly
        for slot in net.slots:
            slot.log_sigma.copy_(torch.linspace(-3.0, -1.0, slot.mu.numel()).view_as(slot.mu))
    priors = [torch.zeros_like(p) for p in model.parameters()]
    path = tmp_path / "post.safetensors"
    path.write_bytes(posterior_bytes(net, priors, 0.1, name))
    saved = load_posterior(path)
    assert saved.family == name
    assert saved.names == tuple(n for n, _ in model.named_parameters())
    assert saved.prior_scale == 0.1
    _, other = _network(log_sigma=0.0)
    FAMILIES[name].load(other, saved.state)
    for slot, back in zip(net.slots, other.slots, strict=True):
        assert torch.equal(saved.mu[slot.name], slot.mu.detach())
        assert torch.equal(saved.sigma[slot.name], torch.exp(slot.log_sigma.detach()))
        assert torch.equal(back.log_sigma, slot.log_sigma)  # the parameter itself, exactly
        assert torch.equal(back.mu, slot.mu)
    expected = gaussian_kl(
        (s.mu, torch.exp(s.log_sigma), p, 0.1) for s, p in zip(net.slots, priors, strict=True)
    )
    assert saved.kl() == expected == FAMILIES[name].kl(net, priors, 0.1)


def test_bad_posterior_files(tmp_path: Path) -> None:
    text = tmp_path / "x.safetensors"
    text.write_text("hello")
    with pytest.raises(InvalidInputError, match="not a valid posterior"):
        load_posterior(text)
    with pytest.raises(InvalidInputError, match="cannot read"):
        load_posterior(tmp_path / "missing.safetensors")
    old = save({"a": torch.zeros(1)}, metadata={"format": "pacbound.gaussian-posterior/1"})
    with pytest.raises(InvalidInputError, match=r"of this version .* re-run certify"):
        read_posterior(old)
    _, net = _network()
    good = posterior_bytes(net, [torch.zeros_like(s.mu) for s in net.slots], 0.1, "diagonal")
    forged = good.replace(b'"diagonal"', b'"lowrank_"')
    with pytest.raises(InvalidInputError, match="unknown posterior family 'lowrank_'"):
        read_posterior(forged)

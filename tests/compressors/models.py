"""Tiny architectures shared by the compressor tests (built from a seed, no global RNG use)."""

from __future__ import annotations

import torch
from torch import nn


def _init(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    return model


def tiny_mlp(seed: int) -> nn.Module:
    """6 → 8 (BatchNorm) → 3: D = 56 + 16 + 27 = 99 parameters, plus BatchNorm buffers."""
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    return _init(model, seed)


def other_mlp(seed: int) -> nn.Module:
    """Another architecture with a different D."""
    return _init(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), seed)


def trained(seed: int) -> nn.Module:
    """A tiny_mlp moved away from its init, with non-trivial BatchNorm statistics."""
    model = tiny_mlp(seed)
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
        bn = model[1]  # type: ignore[index]
        assert isinstance(bn, nn.BatchNorm1d)
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.copy_(torch.randn(8, generator=generator))
        bn.running_var.copy_(torch.rand(8, generator=generator) + 0.5)
    return model

"""The functional sampler's per-example noise, rebuilt from the stream's definition (shared
by the tests that check it computes with exactly those draws)."""

from __future__ import annotations

from torch import Tensor, nn

from pacbound.posterior.streams import DrawKey


def keyed_noise(model: nn.Module, key: DrawKey, rows: int) -> dict[str, Tensor]:
    """Per owning module, its parameters' noise drawn together, keyed by their names joined,
    one row per example (examples 0 … rows − 1)."""
    params = dict(model.named_parameters())
    owners: dict[str, list[str]] = {}
    for name in params:
        owners.setdefault(name.rpartition(".")[0], []).append(name)
    noise: dict[str, Tensor] = {}
    for names in owners.values():
        shapes = [params[n].shape for n in names]
        drawn = key.example_noise("|".join(names), shapes, 0, rows, params[names[0]])
        noise.update(zip(names, drawn, strict=True))
    return noise

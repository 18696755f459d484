"""Save and load a fitted posterior (μ, σ) with its prior, as safetensors.

The file lets anyone re-check a Gaussian certificate: the KL is recomputed from the stored
tensors, and the Monte-Carlo risk can be re-estimated with fresh draws.

Layout: ``posterior.mu/<param>``, ``posterior.sigma/<param>``, ``prior.mu/<param>`` for every
model parameter, and string metadata ``prior_scale`` (σ_p, repr of the float), ``format``
(``pacbound.gaussian-posterior/1``) and ``parameters`` (comma-separated names, in order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from pacbound.errors import InvalidInputError
from pacbound.io.files import write_atomic
from pacbound.posterior.kl import gaussian_kl
from pacbound.posterior.network import StochasticNetwork

FORMAT = "pacbound.gaussian-posterior/1"


@dataclass(frozen=True)
class SavedPosterior:
    names: tuple[str, ...]
    mu: dict[str, Tensor]
    sigma: dict[str, Tensor]
    prior_mu: dict[str, Tensor]
    prior_scale: float

    def kl(self) -> float:
        """KL(Q‖P) in nats, recomputed from the stored tensors (same rounding margin)."""
        return gaussian_kl(
            (self.mu[n], self.sigma[n], self.prior_mu[n], self.prior_scale) for n in self.names
        )


def posterior_bytes(
    network: StochasticNetwork, prior_means: list[Tensor], prior_scale: float
) -> bytes:
    tensors: dict[str, Tensor] = {}
    names = []
    for slot, prior in zip(network.slots, prior_means, strict=True):
        names.append(slot.name)
        tensors[f"posterior.mu/{slot.name}"] = slot.mu.detach().cpu().contiguous()
        tensors[f"posterior.sigma/{slot.name}"] = (
            torch.exp(slot.log_sigma.detach()).cpu().contiguous()
        )
        tensors[f"prior.mu/{slot.name}"] = prior.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "prior_scale": repr(float(prior_scale)),
        "parameters": ",".join(names),
    }
    return save(tensors, metadata=metadata)


def save_posterior(
    path: Path, network: StochasticNetwork, prior_means: list[Tensor], prior_scale: float
) -> None:
    """Write the posterior atomically (no partial file on failure)."""
    write_atomic(path, posterior_bytes(network, prior_means, prior_scale), "--save-posterior")


def load_posterior(path: Path) -> SavedPosterior:
    """Read a posterior file written by :func:`save_posterior`; raise on anything else."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read posterior file {path}: {exc.strerror}") from None
    try:
        tensors = load(data)
        from safetensors import safe_open  # metadata lives in the header

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidInputError(
            f"{path} is not a valid posterior safetensors file ({exc})"
        ) from None
    if metadata.get("format") != FORMAT:
        raise InvalidInputError(
            f"{path} is not a pacbound posterior (format {metadata.get('format')!r})"
        )
    names = tuple(n for n in metadata.get("parameters", "").split(",") if n)
    try:
        prior_scale = float(metadata["prior_scale"])
        mu = {n: tensors[f"posterior.mu/{n}"] for n in names}
        sigma = {n: tensors[f"posterior.sigma/{n}"] for n in names}
        prior_mu = {n: tensors[f"prior.mu/{n}"] for n in names}
    except (KeyError, ValueError) as exc:
        raise InvalidInputError(f"{path} is missing posterior data ({exc})") from None
    return SavedPosterior(names, mu, sigma, prior_mu, prior_scale)

"""Save and load a fitted posterior Q with its prior, as safetensors: the hypothesis file of
``certify --method gaussian`` (``--save-posterior``), which ``verify`` re-certifies.

Layout: ``posterior.<kind>/<param>`` for every tensor kind of the family's state
(:meth:`~pacbound.posterior.family.PosteriorFamily.state`; ``mu`` and ``log_sigma`` for the
elementwise families) and ``prior.mu/<param>`` for every model parameter, and string
metadata ``format`` (``pacbound.gaussian-posterior/2``), ``family`` (the posterior family's
name), ``prior_scale`` (σ_p, repr of the float) and ``parameters`` (comma-separated names,
in order). log σ is stored, not σ, so that a loaded Q draws bit for bit the same σ.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from pacbound.errors import InvalidInputError
from pacbound.posterior.families import FAMILIES, family
from pacbound.posterior.family import State
from pacbound.posterior.kl import gaussian_kl
from pacbound.posterior.network import StochasticNetwork

FORMAT = "pacbound.gaussian-posterior/2"


@dataclass(frozen=True)
class SavedPosterior:
    """A posterior file's contents: the family, its state, the prior mean and σ_p."""

    names: tuple[str, ...]
    family: str
    state: State
    prior_mu: dict[str, Tensor]
    prior_scale: float

    @property
    def mu(self) -> dict[str, Tensor]:
        return self.state["mu"]

    @property
    def sigma(self) -> dict[str, Tensor]:
        return {n: torch.exp(v) for n, v in self.state["log_sigma"].items()}

    def kl(self) -> float:
        """KL(Q‖P) in nats, recomputed from the stored tensors (same rounding margin)."""
        sigma = self.sigma
        return gaussian_kl(
            (self.mu[n], sigma[n], self.prior_mu[n], self.prior_scale) for n in self.names
        )


def posterior_bytes(
    network: StochasticNetwork, prior_means: list[Tensor], prior_scale: float, family_name: str
) -> bytes:
    """The posterior file of Q (``network`` under family ``family_name``) and its prior."""
    tensors: dict[str, Tensor] = {}
    for kind, values in family(family_name).state(network).items():
        for name, value in values.items():
            tensors[f"posterior.{kind}/{name}"] = value
    for slot, prior in zip(network.slots, prior_means, strict=True):
        tensors[f"prior.mu/{slot.name}"] = prior.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "family": family_name,
        "prior_scale": repr(float(prior_scale)),
        "parameters": ",".join(slot.name for slot in network.slots),
    }
    return save(tensors, metadata=metadata)


def read_posterior(data: bytes, source: str = "the posterior file") -> SavedPosterior:
    """Parse the bytes of a posterior file; InvalidInputError naming ``source`` otherwise."""
    try:
        tensors = load(data)
        metadata = _metadata(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidInputError(
            f"{source} is not a valid posterior safetensors file ({exc})"
        ) from None
    if metadata.get("format") != FORMAT:
        raise InvalidInputError(
            f"{source} is not a pacbound posterior of this version (format "
            f"{metadata.get('format')!r}, need {FORMAT!r}); re-run certify --save-posterior"
        )
    names = tuple(n for n in metadata.get("parameters", "").split(",") if n)
    kind = metadata.get("family", "")
    if kind not in FAMILIES:
        raise InvalidInputError(f"{source} names an unknown posterior family {kind!r}")
    state: State = {}
    for key, value in tensors.items():
        section, _, name = key.partition("/")
        if section.startswith("posterior."):
            state.setdefault(section.removeprefix("posterior."), {})[name] = value
    try:
        prior_scale = float(metadata["prior_scale"])
        prior_mu = {n: tensors[f"prior.mu/{n}"] for n in names}
        for values in state.values():
            _ = [values[n] for n in names]
    except (KeyError, ValueError) as exc:
        raise InvalidInputError(f"{source} is missing posterior data ({exc})") from None
    return SavedPosterior(names, kind, state, prior_mu, prior_scale)


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (strings)."""
    if len(data) < 8:
        raise ValueError("file too short")
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a mapping")
    return {str(k): str(v) for k, v in meta.items()}


def load_posterior(path: Path) -> SavedPosterior:
    """Read a posterior file written by ``certify --save-posterior``; raise on anything else."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read posterior file {path}: {exc.strerror}") from None
    return read_posterior(data, str(path))

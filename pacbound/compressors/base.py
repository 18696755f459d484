"""The ``Compressor`` interface and the flat-parameter helpers every compressor shares.

A compressor turns a trained model into a :class:`~pacbound.compressors.message.CompressedMessage`
and back. The certified classifier is always ``decompress(compress(model))``: the decoded
model, rebuilt from the message and the architecture factory alone (MATH.md §6).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from pacbound.compressors.message import CompressedMessage, CompressorKind
from pacbound.errors import InvalidInputError

#: Builds the architecture, initialised deterministically from an integer seed.
ModelFactory = Callable[[int], nn.Module]


def parameter_vector(module: nn.Module) -> Tensor:
    """All parameters, in ``named_parameters`` order, as one detached flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def load_parameter_vector(module: nn.Module, flat: Tensor) -> None:
    """Copy ``flat`` into the parameters (in place); the inverse of :func:`parameter_vector`."""
    offset = 0
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def floating_buffers(module: nn.Module) -> list[Tensor]:
    """The floating-point buffers (e.g. BatchNorm running statistics): data-derived state."""
    return [b for b in module.buffers() if b.is_floating_point()]


def buffer_vector(module: nn.Module) -> Tensor:
    buffers = floating_buffers(module)
    if not buffers:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat([b.detach().to("cpu", torch.float32).reshape(-1) for b in buffers])


def load_buffer_vector(module: nn.Module, flat: Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for b in floating_buffers(module):
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def architecture_fingerprint(module: nn.Module, theta0_sha256: str | None = None) -> int:
    """32 bits of SHA-256 over the names, shapes and dtypes of parameters and buffers, and,
    when θ₀ comes from an init file rather than the seed, that file's sha256."""
    parts = [f"p:{n}:{tuple(p.shape)}:{p.dtype}" for n, p in module.named_parameters()]
    parts += [f"b:{n}:{tuple(b.shape)}:{b.dtype}" for n, b in module.named_buffers()]
    if theta0_sha256 is not None:
        parts.append(f"theta0:{theta0_sha256}")
    return int.from_bytes(hashlib.sha256(";".join(parts).encode()).digest()[:4], "big")


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}", param="seed")
    return seed


class Compressor(ABC):
    """Model → message → decoded model, for one architecture factory.

    ``uses_seed`` says whether decoding depends on the seed (θ₀ and P are regenerated from it);
    when it does, a message made with another seed is refused.
    """

    kind: ClassVar[CompressorKind]
    uses_seed: ClassVar[bool]

    def __init__(
        self, factory: ModelFactory, *, seed: int = 0, device: torch.device | str | None = None
    ) -> None:
        self.factory = factory
        self.seed = check_seed(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def fingerprint(self, module: nn.Module) -> int:
        """The fingerprint a message of this compressor carries: the architecture of
        ``module`` and, for a factory with a fixed θ₀ (``init_sha256``), that θ₀'s file."""
        return architecture_fingerprint(module, getattr(self.factory, "init_sha256", None))

    def build(self, seed: int | None = None) -> nn.Module:
        """A fresh model from the factory (initialised with ``seed``, default ``self.seed``)."""
        return self.factory(self.seed if seed is None else seed).to(self.device)

    @abstractmethod
    def compress(self, model: nn.Module) -> CompressedMessage:
        """The message describing (a quantized version of) ``model``."""

    @abstractmethod
    def decompress(self, message: CompressedMessage | bytes) -> nn.Module:
        """The decoded model: what the certificate is about. Raises InvalidInputError on a
        message for another compressor, architecture or seed."""

    def _parse(self, message: CompressedMessage | bytes) -> CompressedMessage:
        parsed = (
            message
            if isinstance(message, CompressedMessage)
            else CompressedMessage.from_bytes(message)
        )
        if parsed.kind is not self.kind:
            raise InvalidInputError(
                f"this artifact was made by the {parsed.kind.value!r} compressor, not "
                f"{self.kind.value!r}"
            )
        if self.uses_seed and parsed.seed != self.seed:
            raise InvalidInputError(
                f"this artifact was made with seed {parsed.seed}, but decoding was asked "
                f"with seed {self.seed}; pass the seed it was made with"
            )
        return parsed

    def _check_architecture(self, message: CompressedMessage, module: nn.Module) -> None:
        D = sum(p.numel() for p in module.parameters())
        fingerprint = self.fingerprint(module)
        if message.num_parameters != D or fingerprint != message.architecture:
            raise InvalidInputError(
                f"this artifact is for another architecture or θ₀ (D={message.num_parameters}, "
                f"fingerprint {message.architecture:08x}); the given one has D={D}, "
                f"fingerprint {fingerprint:08x}: pass the --arch, --arch-kwargs (and, for a "
                "subspace artifact made with --init, the same --init file) it was made with"
            )

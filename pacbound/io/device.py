"""Which device to compute on: what the user asked for, or CUDA when it is there."""

from __future__ import annotations

import torch

from pacbound.errors import InvalidInputError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` → ``cuda`` if available else ``cpu``; a name or device is checked to exist.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(
            f"--device {device!r} is not a device name; use cpu, cuda or cuda:N",
            param="--device",
        ) from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"--device {device}: CUDA is not available on this machine; use --device cpu",
                param="--device",
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) exist",
                param="--device",
            )
    elif chosen.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(
            f"--device {device}: MPS is not available on this machine; use --device cpu",
            param="--device",
        )
    return chosen

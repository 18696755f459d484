"""Built-in architectures, by the name ``--arch`` accepts.

Each factory takes keyword arguments only through ``--arch-kwargs`` JSON and returns an
``nn.Module`` built from standard torch layers (``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d``,
``nn.MultiheadAttention``, ``nn.LayerNorm``, ``nn.Embedding``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pacbound.models.convnet import convnet
from pacbound.models.lenet import lenet5
from pacbound.models.mlp import mlp
from pacbound.models.resnet import resnet
from pacbound.models.transformer import transformer


@dataclass(frozen=True)
class Builtin:
    """A built-in architecture: its ``--arch`` name, factory, and a one-line kwargs summary."""

    name: str
    factory: Callable[..., nn.Module]
    kwargs_help: str


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            "mlp",
            mlp,
            "in_features=784, hidden=[600], num_classes=10, activation=relu; flattens its input",
        ),
        Builtin(
            "lenet5",
            lenet5,
            "in_channels=1, num_classes=10, input_size=28 (or 32), activation=relu",
        ),
        Builtin(
            "convnet",
            convnet,
            "in_channels=1, channels=[32, 64], hidden=128, num_classes=10, batch_norm=false, "
            "activation=relu; for 28×28 images",
        ),
        Builtin(
            "resnet",
            resnet,
            "in_channels=1, channels=[16, 32, 32], blocks=1, num_classes=10, activation=relu; "
            "BatchNorm and residual connections, for 28×28 images",
        ),
        Builtin(
            "transformer",
            transformer,
            "rows=28, cols=28, d_model=48, heads=4, layers=2, mlp_hidden=96, num_classes=10, "
            "activation=gelu; each image row is a token (row-sequential MNIST)",
        ),
    )
}


def builtin_help() -> str:
    """One line per built-in, for ``--help`` texts."""
    width = max(len(name) for name in BUILTINS)
    return "\n".join(f"  {b.name:<{width}} {b.kwargs_help}" for b in BUILTINS.values())


__all__ = [
    "BUILTINS",
    "Builtin",
    "builtin_help",
    "convnet",
    "lenet5",
    "mlp",
    "resnet",
    "transformer",
]

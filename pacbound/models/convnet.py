"""A small convolutional network for 28×28 images (MNIST-sized)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pacbound.errors import InvalidInputError
from pacbound.models._activations import Activation, make_activation, positive_int, positive_ints


def convnet(
    in_channels: int = 1,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    num_classes: int = 10,
    batch_norm: bool = False,
    activation: str | Activation = "relu",
) -> nn.Sequential:
    """3×3 convolutions (padding 1), each followed by 2×2 max pooling, then one hidden layer.

    Keyword arguments (``--arch convnet --arch-kwargs '{…}'``):

    - ``in_channels`` (int, default 1): image channels.
    - ``channels`` (list of int, default ``[32, 64]``): output channels of each convolution;
      at most 4 (28 → 14 → 7 → 3 → 1 after pooling).
    - ``hidden`` (int, default 128): width of the fully connected hidden layer.
    - ``num_classes`` (int, default 10): number of outputs.
    - ``batch_norm`` (bool, default false): a ``BatchNorm2d`` after each convolution. Its
      running statistics are *buffers* estimated from data, which a bound must pay for
      (MATH.md §4).
    - ``activation`` (``relu``, ``tanh``, ``sigmoid``, ``gelu``, ``elu``; default ``relu``).

    >>> sum(p.numel() for p in convnet().parameters())
    421642
    """
    widths = positive_ints(channels, "channels")
    if not 1 <= len(widths) <= 4:
        raise InvalidInputError(
            f"--arch-kwargs: convnet takes 1 to 4 channels entries, got {len(widths)}",
            param="--arch-kwargs",
        )
    if not isinstance(batch_norm, bool):
        raise InvalidInputError(
            f"--arch-kwargs: batch_norm must be true or false, got {batch_norm!r}",
            param="--arch-kwargs",
        )
    layers: list[nn.Module] = []
    side, fan_in = 28, positive_int(in_channels, "in_channels")
    for width in widths:
        layers.append(nn.Conv2d(fan_in, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers += [make_activation(activation), nn.MaxPool2d(2)]
        side, fan_in = side // 2, width
    width = positive_int(hidden, "hidden")
    layers += [
        nn.Flatten(),
        nn.Linear(fan_in * side * side, width),
        make_activation(activation),
        nn.Linear(width, positive_int(num_classes, "num_classes")),
    ]
    return nn.Sequential(*layers)

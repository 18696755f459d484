"""A small residual network with BatchNorm for 28×28 images (MNIST-sized).

He et al. (2016) basic blocks, scaled down: the point is a model of the shape people train
(convolutions without bias followed by ``BatchNorm2d``, identity and projection shortcuts,
global average pooling), small enough that a per-example Gaussian certificate runs on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pacbound.errors import InvalidInputError
from pacbound.models._activations import Activation, make_activation, positive_int, positive_ints


def _conv_bn(fan_in: int, width: int, *, kernel: int, stride: int) -> nn.Sequential:
    """A bias-free convolution (padding keeps the side for stride 1) and its BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(fan_in, width, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(width),
    )


class BasicBlock(nn.Module):
    """``act(bn(conv(act(bn(conv(x))))) + shortcut(x))``; the shortcut is the identity, or a
    1×1 convolution with BatchNorm when the stride or the width changes."""

    def __init__(
        self, fan_in: int, width: int, *, stride: int, activation: str | Activation
    ) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            _conv_bn(fan_in, width, kernel=3, stride=stride),
            make_activation(activation),
            _conv_bn(width, width, kernel=3, stride=1),
        )
        self.shortcut: nn.Module = (
            _conv_bn(fan_in, width, kernel=1, stride=stride)
            if stride != 1 or fan_in != width
            else nn.Identity()
        )
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.branch(x) + self.shortcut(x))


def resnet(
    in_channels: int = 1,
    channels: Sequence[int] = (16, 32, 32),
    blocks: int = 1,
    num_classes: int = 10,
    activation: str | Activation = "relu",
) -> nn.Sequential:
    """A stem convolution, stages of basic blocks, global average pooling and a linear head.

    Keyword arguments (``--arch resnet --arch-kwargs '{…}'``):

    - ``in_channels`` (int, default 1): image channels.
    - ``channels`` (list of int, default ``[16, 32, 32]``): width of each stage; the first
      stage keeps the input side (28), each later one halves it (stride 2), at most 4 stages.
      The stem convolution has the first stage's width.
    - ``blocks`` (int, default 1): basic blocks per stage.
    - ``num_classes`` (int, default 10): number of outputs.
    - ``activation`` (``relu``, ``tanh``, ``sigmoid``, ``gelu``, ``elu``; default ``relu``).

    Every convolution is bias-free and followed by a ``BatchNorm2d`` whose running statistics
    are buffers estimated from data (MATH.md §10 says how a certificate pays for them).

    >>> sum(p.numel() for p in resnet().parameters())
    39354
    """
    widths = positive_ints(channels, "channels")
    if not 1 <= len(widths) <= 4:
        raise InvalidInputError(
            f"--arch-kwargs: resnet takes 1 to 4 channels entries, got {len(widths)}",
            param="--arch-kwargs",
        )
    depth = positive_int(blocks, "blocks")
    layers: list[nn.Module] = [
        _conv_bn(positive_int(in_channels, "in_channels"), widths[0], kernel=3, stride=1),
        make_activation(activation),
    ]
    fan_in = widths[0]
    for stage, width in enumerate(widths):
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(fan_in, width, stride=stride, activation=activation))
            fan_in = width
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(fan_in, positive_int(num_classes, "num_classes")),
    ]
    return nn.Sequential(*layers)

"""LeNet-5 (LeCun et al. 1998), with max pooling, for 28×28 or 32×32 images."""

from __future__ import annotations

from torch import nn

from pacbound.errors import InvalidInputError
from pacbound.models._activations import Activation, make_activation, positive_int


def lenet5(
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int = 28,
    activation: str | Activation = "relu",
) -> nn.Sequential:
    """LeNet-5: two 5×5 convolutions (6 and 16 channels) with 2×2 max pooling, then 120-84-K.

    Keyword arguments (``--arch lenet5 --arch-kwargs '{…}'``):

    - ``in_channels`` (int, default 1): image channels.
    - ``num_classes`` (int, default 10): number of outputs.
    - ``input_size`` (28 or 32, default 28): image side. 28×28 inputs are zero-padded by 2 in
      the first convolution, so both sizes reach the classic 16×5×5 feature map.
    - ``activation`` (``relu``, ``tanh``, ``sigmoid``, ``gelu``, ``elu``; default ``relu``).

    >>> sum(p.numel() for p in lenet5().parameters())
    61706
    """
    size = positive_int(input_size, "input_size")
    if size not in (28, 32):
        raise InvalidInputError(
            f"--arch-kwargs: lenet5 takes input_size 28 or 32, got {size}", param="--arch-kwargs"
        )
    padding = (32 - size) // 2
    return nn.Sequential(
        nn.Conv2d(positive_int(in_channels, "in_channels"), 6, kernel_size=5, padding=padding),
        make_activation(activation),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        make_activation(activation),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        make_activation(activation),
        nn.Linear(120, 84),
        make_activation(activation),
        nn.Linear(84, positive_int(num_classes, "num_classes")),
    )

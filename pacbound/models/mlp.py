"""A multilayer perceptron built only from ``nn.Flatten``, ``nn.Linear`` and activations."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import nn

from pacbound.models._activations import Activation, make_activation, positive_int, positive_ints


def mlp(
    in_features: int = 784,
    hidden: Sequence[int] = (600,),
    num_classes: int = 10,
    activation: str | Activation = "relu",
) -> nn.Sequential:
    """A fully connected network ``in_features → hidden… → num_classes`` that flattens its input.

    Keyword arguments (``--arch mlp --arch-kwargs '{…}'``):

    - ``in_features`` (int, default 784): size of the flattened input (28·28 for MNIST).
    - ``hidden`` (list of int, default ``[600]``): widths of the hidden layers; ``[]`` gives a
      linear model, ``[600, 600]`` the 784-600-600-10 network.
    - ``num_classes`` (int, default 10): number of outputs (2 for binary MNIST).
    - ``activation`` (``relu``, ``tanh``, ``sigmoid``, ``gelu``, ``elu``; default ``relu``).

    The layers are ``Flatten, Linear, act, …, Linear`` in one ``nn.Sequential``, so the
    parameter names are ``1.weight``, ``1.bias``, ``3.weight``, …

    >>> net = mlp(hidden=[600, 600], num_classes=2)
    >>> sum(p.numel() for p in net.parameters())
    832802
    """
    widths = (
        positive_int(in_features, "in_features"),
        *positive_ints(hidden, "hidden"),
        positive_int(num_classes, "num_classes"),
    )
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(pairwise(widths)):
        if i > 0:
            layers.append(make_activation(activation))
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)

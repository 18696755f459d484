"""The activations the built-in architectures accept, by name."""

from __future__ import annotations

from enum import Enum

from torch import nn

from pacbound.errors import InvalidInputError


class Activation(str, Enum):
    RELU = "relu"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    GELU = "gelu"
    ELU = "elu"


_MODULES: dict[Activation, type[nn.Module]] = {
    Activation.RELU: nn.ReLU,
    Activation.TANH: nn.Tanh,
    Activation.SIGMOID: nn.Sigmoid,
    Activation.GELU: nn.GELU,
    Activation.ELU: nn.ELU,
}


def make_activation(name: str | Activation) -> nn.Module:
    """A fresh activation module for ``name``; an unknown name lists the valid ones."""
    try:
        chosen = Activation(name)
    except ValueError:
        valid = ", ".join(a.value for a in Activation)
        raise InvalidInputError(
            f"--arch-kwargs: unknown activation {name!r}; choose one of {valid}",
            param="--arch-kwargs",
        ) from None
    return _MODULES[chosen]()


def positive_int(value: object, name: str) -> int:
    """``value`` as an int ≥ 1, or an error naming the kwarg (JSON gives ints or floats)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(
            f"--arch-kwargs: {name} must be a positive integer, got {value!r}",
            param="--arch-kwargs",
        )
    return value


def positive_ints(values: object, name: str) -> tuple[int, ...]:
    """A list/tuple of positive ints (possibly empty), as JSON gives them."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, (list, tuple)):
        raise InvalidInputError(
            f"--arch-kwargs: {name} must be a list of positive integers, got {values!r}",
            param="--arch-kwargs",
        )
    return tuple(positive_int(v, name) for v in values)

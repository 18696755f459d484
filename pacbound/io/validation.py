"""Checks of loaded arrays that run before any heavy work: features and labels.

The dry forward pass of a model on the data is :mod:`pacbound.io.dry_run`.
"""

from __future__ import annotations

from math import prod

import numpy as np
import torch
from torch import Tensor

from pacbound.errors import InvalidInputError


def option_of(source: str) -> str:
    """The option a ``source`` text such as ``"--heldout path"`` names (``--data`` if none)."""
    first = source.split(" ", 1)[0].rstrip(":")
    return first if first.startswith("--") else "--data"


def check_features_finite(x: Tensor, source: str) -> None:
    """Refuse NaN/Inf features, naming the first example that has one.

    Fast path: a finite sum implies every term is finite (NaN and ±Inf propagate), so the
    per-example scan only runs when the sum is not finite (bad values, or an overflow).
    """
    if not (x.is_floating_point() or x.is_complex()) or bool(torch.isfinite(x.sum())):
        return
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise InvalidInputError(
            f"{source}: example {int(bad[0])} has NaN/Inf features ({bad.numel()} example(s) "
            "affected); clean or drop those rows",
            param=option_of(source),
        )


def check_labels(y: Tensor, num_outputs: int, source: str) -> None:
    """Labels must be class indices the model can output: integers in [0, num_outputs)."""
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise InvalidInputError(f"{source}: labels have dtype {y.dtype}; expected integers")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_outputs:
        bad = low if low < 0 else high
        raise InvalidInputError(
            f"{source}: label {bad} is outside [0, {num_outputs}) for a model with "
            f"{num_outputs} outputs; set num_classes in --arch-kwargs or use --label-map",
            param=option_of(source),
        )


def check_feature_array(x: np.ndarray, source: str) -> None:
    """Stored features: at least one example with at least one numeric feature."""
    if x.ndim < 2 or x.shape[0] == 0:
        raise InvalidInputError(
            f"{source} has no examples (features of shape {list(x.shape)}); it must hold at "
            "least one example, one row per example",
            param=option_of(source),
        )
    if x.dtype.kind not in "uifb":
        raise InvalidInputError(
            f"{source}: features have dtype {x.dtype}, not numbers; store numeric arrays",
            param=option_of(source),
        )
    if prod(x.shape[1:]) == 0:
        raise InvalidInputError(
            f"{source}: examples have no features (shape {list(x.shape)}); store at least one "
            "feature per example",
            param=option_of(source),
        )


def check_label_array(y: np.ndarray, *, n: int, source: str) -> Tensor:
    """Stored labels as int64 class indices: one per example, whole, non-negative."""
    if y.ndim != 1 or y.shape[0] != n:
        raise InvalidInputError(
            f"{source}: {n} examples but labels of shape {list(y.shape)}; give one integer "
            "label per example",
            param=option_of(source),
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InvalidInputError(
                f"{source}: labels must be whole numbers (class indices), found non-integer values",
                param=option_of(source),
            )
    elif y.dtype.kind not in "uib":
        raise InvalidInputError(
            f"{source}: labels have dtype {y.dtype}; store integer class indices",
            param=option_of(source),
        )
    labels = torch.from_numpy(y.astype(np.int64))
    if bool((labels < 0).any()):
        raise InvalidInputError(
            f"{source}: label {int(labels.min())} is negative; labels are class indices "
            "0, 1, …, K−1 (use --label-map to renumber)",
            param=option_of(source),
        )
    return labels

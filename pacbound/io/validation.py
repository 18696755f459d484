"""Checks that run before any heavy work: finite features, label range, a dry forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError

if TYPE_CHECKING:
    from pacbound.io.datasets import Dataset, Features
    from pacbound.io.models import LoadedModel


def option_of(source: str) -> str:
    """The option a ``source`` text such as ``"--heldout path"`` names (``--data`` if none)."""
    first = source.split(" ", 1)[0].rstrip(":")
    return first if first.startswith("--") else "--data"


@dataclass(frozen=True)
class DryRun:
    """What one forward pass on the first batch showed: shapes and the number of outputs."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    @property
    def num_outputs(self) -> int:
        return self.output_shape[-1]


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


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    try:
        module.eval()
    except NotImplementedError:  # torch.export programs fix their mode at export time
        yield
        return
    try:
        yield
    finally:
        module.train(was_training)


@torch.no_grad()
def check_model_data(
    model: LoadedModel | nn.Module,
    dataset: Dataset | Features,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> DryRun:
    """One forward pass on the first ``batch_size`` examples, then the label range check
    (for a labeled :class:`Dataset`; inputs without labels get the forward pass only).

    A shape mismatch between model and data ends here, as an :class:`InvalidInputError` that
    quotes both shapes, not as a traceback from deep inside torch.
    """
    from pacbound.io.models import LoadedModel

    module = model.module if isinstance(model, LoadedModel) else model
    if device is None:
        first = next(iter(module.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    source = f"--data {dataset.provenance.path}"
    batch = dataset.x[:batch_size].to(device)
    try:
        with _eval_mode(module):
            out = module(batch)
    except Exception as exc:  # torch raises RuntimeError, ValueError, IndexError…
        message = " ".join(str(exc).split())[:160]
        raise InvalidInputError(
            f"the model cannot process {source}: a batch of shape {list(batch.shape)} "
            f"failed ({type(exc).__name__}: {message}); check that --arch/--arch-kwargs "
            f"(e.g. in_features, in_channels) fit the data{_shape_hint(batch.shape)}",
            param="--data",
        ) from None
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != batch.shape[0]:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InvalidInputError(
            f"the model returns {shape} for a batch of {batch.shape[0]} examples from "
            f"{source}; a classifier must return logits of shape [batch, classes]",
            param="--arch",
        )
    from pacbound.io.datasets import Features

    if isinstance(dataset, Features):
        return DryRun(tuple(batch.shape), tuple(out.shape))
    check_labels(dataset.y, int(out.shape[1]), source)
    if dataset.num_classes > out.shape[1]:
        raise InvalidInputError(
            f"{source} has {dataset.num_classes} classes but the model has {out.shape[1]} "
            "outputs; set num_classes in --arch-kwargs or use --label-map",
            param="--data",
        )
    return DryRun(tuple(batch.shape), tuple(out.shape))


def _shape_hint(shape: torch.Size) -> str:
    """How ``--input-shape`` would turn these examples into one-channel images, if it could."""
    if len(shape) == 3:
        return f", or pass --input-shape 1,{shape[1]},{shape[2]} for one-channel images"
    side = round(prod(shape[1:]) ** 0.5)
    if len(shape) == 2 and side > 1 and side * side == shape[1]:
        return f", or pass --input-shape 1,{side},{side} for one-channel images"
    return ""

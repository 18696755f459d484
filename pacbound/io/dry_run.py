"""A dry forward pass of the model on the first batch of the data, before any heavy work:
a shape mismatch or a label outside the model's outputs ends here with a clear message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.io.datasets import Dataset, Features
from pacbound.io.models import LoadedModel
from pacbound.io.validation import check_labels


@dataclass(frozen=True)
class DryRun:
    """What one forward pass on the first batch showed: shapes and the number of outputs."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    @property
    def num_outputs(self) -> int:
        return self.output_shape[-1]


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

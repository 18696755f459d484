"""Pieces shared by the certification pipelines: progress hooks, determinism check, verdict."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError

#: ``factory(description, total)`` returns a hook called with the number of items done.
ProgressFactory = Callable[[str, int], Callable[[int], None]]


def no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda advance: None


class Timer:
    """Wall-clock seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def take_rows(x: Tensor, indices: Tensor) -> Tensor:
    """``x[indices]``; for streamed features (:class:`pacbound.io.streaming.LazyFeatures`,
    which the pipelines accept wherever they take ``x``) a lazy view of those rows instead,
    so that splitting S into S_prior and S_bound reads nothing until a batch is needed."""
    view_rows = getattr(x, "view_rows", None)
    return x[indices] if view_rows is None else view_rows(indices)


@torch.no_grad()
def check_deterministic(model: nn.Module, x: Tensor, device: torch.device) -> None:
    """Refuse a model whose eval-mode outputs differ between two identical passes.

    A non-deterministic forward (dropout left on, sampling inside ``forward``) means the
    classifier being certified is not the one being evaluated.
    """
    model.eval()
    batch = x[: min(256, x.shape[0])].to(device)
    first, second = model(batch), model(batch)
    if not torch.equal(first, second):
        raise InvalidInputError(
            "the model is not deterministic in eval mode (two forward passes on the same "
            "batch differ): the certified classifier would not be the evaluated one. Remove "
            "randomness from forward(), or pass --allow-nondeterministic to skip this check"
        )


@dataclass(frozen=True)
class Verdict:
    """Whether a bound beats the error of guessing among K classes (1 − 1/K)."""

    bound: float
    num_classes: int

    @property
    def chance_error(self) -> float:
        return 1.0 - 1.0 / self.num_classes

    @property
    def non_vacuous(self) -> bool:
        return self.bound < self.chance_error

    def to_dict(self) -> dict[str, object]:
        return {
            "non_vacuous": self.non_vacuous,
            "chance_error": self.chance_error,
            "num_classes": self.num_classes,
        }

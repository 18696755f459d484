"""Pieces shared by the certification pipelines: progress hooks, determinism check, verdict."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from pacbound.bounds.checkpoint import checkpoint_bound
from pacbound.bounds.result import BoundResult
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
    if not isinstance(first, Tensor) or not isinstance(second, Tensor):
        raise InvalidInputError(
            f"the model must return one (batch, classes) tensor of scores; it returned a "
            f"{type(first).__name__}. Wrap it so that forward returns the logits only"
        )
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


@torch.no_grad()
def model_num_outputs(model: nn.Module, x: Tensor, device: torch.device) -> int:
    """The number of scores the model gives one example (a dry eval-mode pass on ``x[:1]``).

    The verdict's chance level 1 − 1/K uses this K: the classifier chooses among its own
    outputs, whatever number of classes the data happen to contain.
    """
    was_training = model.training
    model.eval()
    try:
        out = model(x[:1].to(device))
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InvalidInputError(
            f"the model must map a batch of B inputs to a (B, classes) tensor of scores; one "
            f"input gave {shape}. Check --arch/--arch-kwargs and the input format"
        )
    return int(out.shape[1])


def checkpoint_block(
    certificate: BoundResult,
    disagreement: BoundResult,
    *,
    source: str,
    disagreements: int,
    inputs: int,
    certified: str,
    delta_certified: float,
    draws_per_input: int = 1,
) -> dict[str, Any]:
    """``results["checkpoint"]``: L(h) ≤ L(certified) + D(h, certified) (MATH.md §11).

    ``certificate`` bounds the certified classifier (``certified``: ``"Q"`` or
    ``"decoded"``) with total failure probability ``delta_certified`` (every part of its
    budget, e.g. PAC-Bayes plus Monte-Carlo); ``disagreement`` bounds D(h, ·) from
    ``disagreements`` out of ``inputs`` inputs never used for anything else (``source``:
    ``"heldout"`` or ``"unlabeled"``) at δ_D. The statement holds with probability
    ≥ 1 − delta_certified − δ_D (``delta_total``).
    """
    total = checkpoint_bound(certificate, disagreement)
    return {
        "certified_classifier": "the checkpoint's deterministic weights",
        "bound": total.value,
        "bound_on_certified": certificate.value,
        "disagreement": {
            "source": source,
            "inputs": inputs,
            "disagreements": disagreements,
            "rate": disagreements / inputs,
            "upper_bound": disagreement.value,
            "delta": disagreement.delta,
            "draws_per_input": draws_per_input,
        },
        "delta_total": delta_certified + disagreement.delta,
        "statement": f"L(h) ≤ L({certified}) + D(h, {certified})",
    }


def check_eval_mode(model: nn.Module) -> None:
    """Put ``model`` in eval mode and refuse normalization layers that stay in train mode (an
    architecture whose ``train()`` keeps a BatchNorm on batch statistics): they compute with
    the other examples of the batch, not as a fixed per-example function. (Other modules'
    flags are the determinism and batch-independence checks' concern; a ``torch.export``
    program ignores them.)"""
    model.eval()
    stuck = [
        f"{name or '<root>'} ({type(m).__name__})"
        for name, m in model.named_modules()
        if m.training and isinstance(m, _NormBase)
    ]
    if stuck:
        shown = ", ".join(stuck[:4]) + (f" and {len(stuck) - 4} more" if len(stuck) > 4 else "")
        raise InvalidInputError(
            f"these normalization layers stay in train mode after model.eval(): {shown}; in "
            "train mode they use the batch's statistics, so the certified classifier would "
            "not be a fixed per-example function. Let eval() switch them off"
        )

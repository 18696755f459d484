"""Priors: the mean (init, zero, or trained on a held-apart prior split) and a scale grid.

The prior must be fixed before the bound sample is seen. A data-dependent mean is allowed
when it depends only on S_prior, a seeded split disjoint from S_bound (MATH.md §5). The
prior scale σ_p is chosen from a finite grid fixed in advance; choosing it after seeing the
data costs a union bound: each grid value gets δ/G (MATH.md §4).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from pacbound.bounds.validation import check_count, check_positive
from pacbound.errors import InvalidInputError


class PriorMean(str, Enum):
    INIT = "init"
    ZERO = "zero"
    DATA = "data"


@dataclass(frozen=True)
class ScaleGrid:
    """Prior standard deviations σ_p, fixed before seeing data: ``LOW:HIGH:COUNT``
    log-spaced (``kind`` "log") or an explicit list of values (``kind`` "list").

    :meth:`to_dict` records enough to rebuild the exact values (:meth:`from_dict`), so
    ``pacbound verify`` can check that σ_p is a grid value and that δ paid for the whole grid.
    """

    scales: tuple[float, ...]
    kind: Literal["log", "list"] = "list"

    def __post_init__(self) -> None:
        if not self.scales:
            raise InvalidInputError("the prior scale grid is empty", param="--prior-scales")
        for s in self.scales:
            check_positive(s, "--prior-scales")

    @classmethod
    def log_spaced(cls, low: float, high: float, count: int) -> ScaleGrid:
        """``count`` values from ``low`` to ``high`` (inclusive), equally spaced in log."""
        low, high = check_positive(low, "--prior-scales"), check_positive(high, "--prior-scales")
        count = check_count(count, "--prior-scales")
        if count == 1:
            return cls((low,), "log")
        if high <= low:
            raise InvalidInputError(
                f"--prior-scales: the high end {high:g} must exceed the low end {low:g}",
                param="--prior-scales",
            )
        return cls(tuple(float(v) for v in np.geomspace(low, high, count)), "log")

    @classmethod
    def parse(cls, text: str) -> ScaleGrid:
        """``LOW:HIGH:COUNT`` (log-spaced) or a comma-separated list of values."""
        try:
            if ":" in text:
                lo, hi, cnt = text.split(":")
                low, high, count = float(lo), float(hi), int(cnt)
            else:
                values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise InvalidInputError(
                f"--prior-scales must be LOW:HIGH:COUNT (e.g. 1e-4:1e-1:49) or a list "
                f"of numbers, got {text!r}",
                param="--prior-scales",
            ) from None
        if ":" in text:
            return cls.log_spaced(low, high, count)
        return cls(values)

    @property
    def size(self) -> int:
        return len(self.scales)

    def to_dict(self) -> dict[str, object]:
        """Size, range, a hash of the exact values (a log grid can have thousands), the kind,
        and for a list grid its values (as typed: short)."""
        digest = hashlib.sha256(np.asarray(self.scales, dtype="<f8").tobytes()).hexdigest()
        out: dict[str, object] = {
            "size": self.size,
            "min": min(self.scales),
            "max": max(self.scales),
            "values_sha256": digest,
            "kind": self.kind,
        }
        if self.kind == "list":
            out["values"] = list(self.scales)
        return out

    @classmethod
    def from_dict(cls, recorded: dict[str, object]) -> ScaleGrid:
        """The grid a :meth:`to_dict` record describes: the list values, or ``size``
        log-spaced values from ``min`` to ``max`` (also for records without a ``kind``,
        written before list grids were recorded). The caller compares ``values_sha256``."""
        if recorded.get("kind") == "list":
            values = recorded.get("values")
            if not isinstance(values, list):
                raise InvalidInputError("a list prior-scale grid record has no values")
            return cls(tuple(float(v) for v in values), "list")
        low, high, size = recorded.get("min"), recorded.get("max"), recorded.get("size")
        numbers = all(isinstance(v, (int, float)) for v in (low, high))
        if not numbers or not isinstance(size, int):
            raise InvalidInputError("a prior-scale grid record has no numeric min, max, size")
        return cls.log_spaced(float(low), float(high), size)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DataSplit:
    """A seeded split of S into a prior part and a bound part (indices into S)."""

    prior_indices: Tensor
    bound_indices: Tensor
    seed: int
    prior_fraction: float

    @property
    def sha256(self) -> str:
        """Hash of both index arrays (int64, little-endian), for the report."""
        h = hashlib.sha256()
        for idx in (self.prior_indices, self.bound_indices):
            h.update(idx.to(torch.int64).cpu().numpy().astype("<i8").tobytes())
            h.update(b"|")
        return h.hexdigest()

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "prior_fraction": self.prior_fraction,
            "n_prior": int(self.prior_indices.numel()),
            "n_bound": int(self.bound_indices.numel()),
            "indices_sha256": self.sha256,
        }


def split_data(n: int, *, prior_fraction: float, seed: int) -> DataSplit:
    """A seeded random permutation of range(n): the first ⌊f·n⌋ go to the prior."""
    if not 0.0 < prior_fraction < 1.0 or not math.isfinite(prior_fraction):
        raise InvalidInputError(
            f"--prior-fraction must be in (0, 1), got {prior_fraction!r}: a data-dependent "
            "prior needs some data for the prior and some for the bound",
            param="--prior-fraction",
        )
    n_prior = math.floor(prior_fraction * n)
    if n_prior < 1 or n - n_prior < 1:
        raise InvalidInputError(
            f"--prior-fraction {prior_fraction} leaves an empty part of the {n} examples",
            param="--prior-fraction",
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    prior_idx, _ = torch.sort(perm[:n_prior])
    bound_idx, _ = torch.sort(perm[n_prior:])
    return DataSplit(prior_idx, bound_idx, seed, prior_fraction)


LrSchedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class PriorTrainingRecipe:
    """How the data-dependent prior mean is trained on S_prior (from the init weights).

    SGD with momentum on the cross-entropy, mini-batches drawn by a seeded permutation each
    epoch; the learning rate is constant or follows a cosine decay to 0 over all steps.
    ``augment_shift`` k > 0 shifts each image (N×C×H×W data only) cyclically by a seeded
    random offset in [−k, k] pixels along both axes: the prior may process S_prior in any
    way, and a prior mean that generalises better is a better centre for the posterior.
    Defaults follow the spirit of Pérez-Ortiz et al. 2021.
    """

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.95
    batch_size: int = 250
    lr_schedule: LrSchedule = "cosine"
    augment_shift: int = 0
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Each image of ``x`` (N×C×H×W) rolled by its own random (dy, dx) ∈ [−k, k]²."""
    if max_shift == 0:
        return x
    k = max_shift
    shifts = torch.randint(-k, k + 1, (x.shape[0], 2), generator=generator)
    codes = (shifts[:, 0] + k) * (2 * k + 1) + (shifts[:, 1] + k)
    out = torch.empty_like(x)
    for code in torch.unique(codes).tolist():
        rows = torch.nonzero(codes == code).squeeze(1)
        dy, dx = (int(v) for v in shifts[int(rows[0])])
        out[rows.to(x.device)] = torch.roll(x[rows.to(x.device)], (dy, dx), dims=(2, 3))
    return out


def _check_recipe(recipe: PriorTrainingRecipe, x: Tensor) -> None:
    check_count(recipe.epochs, "--prior-epochs")
    check_positive(recipe.lr, "--prior-lr")
    if recipe.lr_schedule not in ("constant", "cosine"):
        raise InvalidInputError(
            f"unknown prior learning-rate schedule {recipe.lr_schedule!r}; valid: constant, cosine",
            param="--prior-lr-schedule",
        )
    if recipe.augment_shift < 0:
        raise InvalidInputError(
            f"--prior-augment-shift must be >= 0, got {recipe.augment_shift}",
            param="--prior-augment-shift",
        )
    if recipe.augment_shift > 0 and len(x.shape) != 4:
        raise InvalidInputError(
            f"--prior-augment-shift {recipe.augment_shift} shifts images, but the data have "
            f"shape {tuple(x.shape)} (need N×C×H×W); drop the option for non-image data",
            param="--prior-augment-shift",
        )
    if recipe.augment_shift > 0 and recipe.augment_shift >= min(x.shape[2], x.shape[3]):
        raise InvalidInputError(
            f"--prior-augment-shift {recipe.augment_shift} is not smaller than the images "
            f"({x.shape[2]}×{x.shape[3]})",
            param="--prior-augment-shift",
        )


def train_prior_mean(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    recipe: PriorTrainingRecipe,
    *,
    device: torch.device,
    progress: object | None = None,
) -> nn.Module:
    """Train ``model`` in place on (x, y) = S_prior only and return it.

    Not sharded under torchrun: every rank trains the same prior on all of S_prior. The prior
    mean is a function of S_prior that ``pacbound verify`` re-derives bit for bit, at any
    world size; a data-parallel step would make it depend on the world size through the
    floating-point reduction order (and BatchNorm's batch statistics over a rank's share).
    This phase gets no speed-up from more ranks (docs/scaling.md)."""
    _check_recipe(recipe, x)
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        # Dropout and other layers draw from the global generator: seed it too.
        torch.manual_seed(recipe.seed)
        return _train_prior_mean(model, x, y, recipe, device=device, progress=progress)


def _train_prior_mean(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    recipe: PriorTrainingRecipe,
    *,
    device: torch.device,
    progress: object | None,
) -> nn.Module:
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    gen = torch.Generator().manual_seed(recipe.seed)
    n = x.shape[0]
    total_steps = recipe.epochs * math.ceil(n / recipe.batch_size)
    step = 0
    for _ in range(recipe.epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, recipe.batch_size):
            if recipe.lr_schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = 0.5 * recipe.lr * (1.0 + math.cos(math.pi * step / total_steps))
            idx = perm[start : start + recipe.batch_size]
            xb = random_shift(x[idx], recipe.augment_shift, gen).to(device)
            yb = y[idx].to(device)
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if callable(progress):
                progress(int(idx.numel()))
    model.eval()
    return model

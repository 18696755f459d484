"""The prior of a Gaussian certificate: its mean and the bound sample (MATH.md §5).

The prior mean is the ``--init`` weights, zero, or trained on a seeded prior split S_prior
(from the init weights or a seeded fresh initialisation); the bound sample S_bound is the
rest of S (all of S for the data-free means). :func:`derive_prior` is deterministic for a
seed, so ``verify`` re-derives the prior with it instead of trusting a saved prior mean.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.certify.common import ProgressFactory, no_progress, take_rows
from pacbound.certify.gaussian_options import SEED_OFFSETS, GaussianOptions
from pacbound.errors import InvalidInputError
from pacbound.posterior.normalization import (
    affine_state,
    reset_batch_norm_statistics,
    to_channel_affine,
)
from pacbound.posterior.priors import (
    DataSplit,
    PriorMean,
    PriorTrainingRecipe,
    split_data,
    train_prior_mean,
)
from pacbound.posterior.risk import count_errors


@dataclass(frozen=True)
class PriorChoice:
    """The prior mean (one tensor per parameter), the split of S (``None``: S_bound = S)
    and the report's ``prior`` fields known before σ_p is chosen."""

    means: list[Tensor]
    split: DataSplit | None
    info: dict[str, Any]

    def bound_sample(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """S_bound: the rows of S the certificate counts (a lazy view for streamed x)."""
        if self.split is None:
            return x, y
        return take_rows(x, self.split.bound_indices), y[self.split.bound_indices]


def derive_prior(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    options: GaussianOptions,
    init_state: dict[str, Tensor] | None,
    device: torch.device,
    progress: ProgressFactory = no_progress,
) -> PriorChoice:
    """The prior ``options.prior`` names, derived from S only where it may be (S_prior)."""
    info: dict[str, Any] = {"mean": options.prior.value}
    if options.prior is not PriorMean.DATA:
        return PriorChoice(_fixed_prior_means(options.prior, model, init_state), None, info)
    split, prior_model = data_dependent_prior(
        model,
        x,
        y,
        prior_fraction=options.prior_fraction,
        recipe=options.prior_recipe,
        seed=options.seed,
        init_state=init_state,
        device=device,
        progress=progress,
    )
    # BatchNorm trained on S_prior (batch statistics, running statistics from S_prior only)
    # enters as its affine map (a, c) like the checkpoint's (MATH.md §10)
    means = [p.detach().clone() for p in to_channel_affine(prior_model.eval()).parameters()]
    info["split"] = split.to_dict()
    info["error"] = _prior_errors(prior_model, x, y, split, options.batch_size, device)
    info["init_source"] = "init weights" if init_state is not None else "seeded fresh init"
    return PriorChoice(means, split, info)


def _fixed_prior_means(
    kind: PriorMean, model: nn.Module, init_state: dict[str, Tensor] | None
) -> list[Tensor]:
    """The zero or ``--init`` prior mean, in the order of the parameters of the model the
    posterior covers (eval-mode BatchNorm as its affine map: (a₀, c₀) from the init file's
    γ, β and statistics, or a fresh BatchNorm's)."""
    affine = to_channel_affine(model)
    if kind is PriorMean.ZERO:
        return [torch.zeros_like(p.detach()) for p in affine.parameters()]
    if init_state is None:
        raise InvalidInputError(
            "--prior init needs the initial weights: pass --init PATH (saved before training)",
            param="--init",
        )
    state = affine_state(model, init_state) if affine is not model else init_state
    return [state[name].detach().to(p.device, p.dtype) for name, p in affine.named_parameters()]


def _initial_model(model: nn.Module, init_state: dict[str, Tensor] | None, seed: int) -> nn.Module:
    """A data-independent starting point for the prior mean: the init weights, or a fresh
    seeded initialization of the architecture."""
    fresh = copy.deepcopy(model)
    if init_state is not None:
        with torch.no_grad():
            for name, p in fresh.named_parameters():
                p.copy_(init_state[name])
        reset_batch_norm_statistics(fresh, init_state)
        return fresh
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + SEED_OFFSETS["prior_init"])
        for module in fresh.modules():
            # nn.MultiheadAttention initializes its own tensors in _reset_parameters only
            reset = getattr(module, "reset_parameters", None) or getattr(
                module, "_reset_parameters", None
            )
            if callable(reset):
                reset()
    kept = [
        name
        for (name, p), q in zip(fresh.named_parameters(), model.parameters(), strict=True)
        if torch.equal(p, q)
    ]
    if kept:
        # Those would start the prior at the trained weights, which have seen S_bound.
        raise InvalidInputError(
            f"--prior data without --init: {len(kept)} parameter(s) could not be re-initialized "
            f"(no reset_parameters), e.g. {', '.join(kept[:3])}; pass --init PATH with the "
            "weights saved before training",
            param="--init",
        )
    return fresh


def data_dependent_prior(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    prior_fraction: float,
    recipe: PriorTrainingRecipe,
    seed: int,
    init_state: dict[str, Tensor] | None,
    device: torch.device,
    progress: ProgressFactory = no_progress,
) -> tuple[DataSplit, nn.Module]:
    """The seeded split of S and the prior mean trained on S_prior only (from the init
    weights, or a seeded fresh initialisation). Deterministic for a seed, so ``pacbound
    verify`` re-runs it to check a saved prior mean."""
    split = split_data(x.shape[0], prior_fraction=prior_fraction, seed=seed)
    prior_model = _initial_model(model, init_state, seed).to(device)
    hook = progress("training prior on S_prior", recipe.epochs * len(split.prior_indices))
    train_prior_mean(
        prior_model,
        take_rows(x, split.prior_indices),
        y[split.prior_indices],
        recipe,
        device=device,
        progress=hook,
    )
    return split, prior_model


def _prior_errors(
    prior_model: nn.Module,
    x: Tensor,
    y: Tensor,
    split: DataSplit,
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """The data-dependent prior mean's own 0-1 error on S_prior and on S_bound (information:
    a poor prior makes a loose bound, and the user should know why)."""
    prior_model.eval()
    out = {}
    for part, rows in (("prior_split", split.prior_indices), ("bound_split", split.bound_indices)):
        count = count_errors(
            prior_model, take_rows(x, rows), y[rows], batch_size=batch_size, device=device
        )
        out[part] = count.rate
    return out


#: A data-dependent prior whose error on S_bound exceeds this share of the chance error
#: gets a warning (it was trained too little, or with an unsuitable recipe).
POOR_PRIOR_SHARE = 0.5


def prior_warning(prior: dict[str, Any], chance_error: float) -> str | None:
    """A warning line when the data-dependent prior is poor, else ``None``."""
    error = prior.get("error")
    if not error or error["bound_split"] <= POOR_PRIOR_SHARE * chance_error:
        return None
    return (
        f"the data-dependent prior is poor: error {error['prior_split']:.3f} on S_prior and "
        f"{error['bound_split']:.3f} on S_bound (chance {chance_error:.3f}); the bound will be "
        "loose. Train it longer or with another rate (--prior-epochs, --prior-lr)"
    )

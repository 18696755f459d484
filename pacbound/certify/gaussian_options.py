"""What defines a Gaussian certificate before the data are seen: its options, δ budget and
random streams (``certify --method gaussian``; MATH.md §2–5, §8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from pacbound.bounds import DeltaBudget, DeltaPart
from pacbound.bounds.budget import remaining_delta
from pacbound.bounds.validation import check_delta
from pacbound.errors import InvalidInputError
from pacbound.posterior.fit import TrainingRecipe
from pacbound.posterior.network import Sampler
from pacbound.posterior.priors import PriorMean, PriorTrainingRecipe, ScaleGrid

#: Offsets that give each random stream of a run its own seed.
SEED_OFFSETS = {
    "search": 1,
    "training": 2,
    "monte_carlo": 3,
    "prior_init": 4,
    "selection": 5,
    "agreement": 6,
    "disagreement": 7,
}


#: Prior-scale grid size. The KL is very sensitive to σ_p when there are many weights
#: (a factor r in σ_p² off the optimum costs ≈ D(ln r)²/4 nats), so the grid is fine:
#: 6001 log-spaced values in [1e-6, 1] (ratio 1.0023) cost only ln 6001 ≈ 8.7 nats.
DEFAULT_GRID_SIZE = 6001


class Posterior(str, Enum):
    ISOTROPIC = "isotropic"
    DIAGONAL = "diagonal"


@dataclass(frozen=True)
class GaussianOptions:
    """Everything that defines a Gaussian certificate, fixed before the data are seen."""

    prior: PriorMean = PriorMean.INIT
    posterior: Posterior = Posterior.ISOTROPIC
    prior_scales: ScaleGrid = field(
        default_factory=lambda: ScaleGrid.log_spaced(1e-6, 1.0, DEFAULT_GRID_SIZE)
    )
    prior_fraction: float = 0.5
    prior_recipe: PriorTrainingRecipe = field(default_factory=PriorTrainingRecipe)
    training: TrainingRecipe = field(default_factory=TrainingRecipe)
    mc_passes: int = 5
    delta: float = 0.05
    mc_delta: float | None = None  # default: delta / 5
    heldout_delta: float | None = None  # default: delta (a separate statement)
    disagreement_delta: float | None = None  # default: delta / 5 (checkpoint certificate)
    seed: int = 0
    batch_size: int = 1024
    search_examples: int = 10000
    check_deterministic: bool = True
    sampler: Sampler = Sampler.LAYERS

    def budget(self) -> DeltaBudget:
        delta = check_delta(self.delta, "--delta")
        mc = delta / 5.0 if self.mc_delta is None else check_delta(self.mc_delta, "--mc-delta")
        if mc >= delta:
            raise InvalidInputError(
                f"--mc-delta ({mc:g}) must be smaller than --delta ({delta:g}): the rest of "
                "delta goes to the PAC-Bayes inequality",
                param="--mc-delta",
            )
        return DeltaBudget(
            delta,
            (
                _part(
                    "pac-bayes",
                    remaining_delta(delta, mc),  # rounded down: never sums above delta
                    self.prior_scales.size,
                    "PAC-Bayes-kl inequality, shared by the prior-scale grid",
                ),
                _part("monte-carlo", mc, 1, "Chernoff bound on the posterior's empirical risk"),
            ),
        )

    @property
    def certificate_batch_size(self) -> int:
        """The batch size of the certificate's own passes (Monte-Carlo risk, agreement,
        disagreement): one example at a time for a model that is random by design
        (``check_deterministic=False``), so that its randomness is drawn per example and the
        Chernoff bound's independence holds."""
        return self.batch_size if self.check_deterministic else 1

    @property
    def resolved_disagreement_delta(self) -> float:
        if self.disagreement_delta is None:
            return self.delta / 5.0
        return check_delta(self.disagreement_delta, "--disagreement-delta")

    def to_dict(self) -> dict[str, Any]:
        return {
            "prior": self.prior.value,
            "posterior": self.posterior.value,
            "prior_scales": self.prior_scales.to_dict(),
            "prior_fraction": self.prior_fraction if self.prior is PriorMean.DATA else None,
            "prior_training": self.prior_recipe.to_dict() if self.prior is PriorMean.DATA else None,
            "posterior_training": (
                self.training.to_dict() if self.posterior is Posterior.DIAGONAL else None
            ),
            "mc_passes": self.mc_passes,
            "mc_delta": self.budget().part("monte-carlo").delta,
            "heldout_delta": self.delta if self.heldout_delta is None else self.heldout_delta,
            "disagreement_delta": self.resolved_disagreement_delta,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "search_examples": self.search_examples,
            "check_deterministic": self.check_deterministic,
            "sampler": self.sampler.value,
        }


def check_training_seed(training_seed: int, seed: int) -> None:
    """The training noise must not replay the search, selection, Monte-Carlo or
    disagreement streams (the certificate's draws must be independent of how Q was chosen)."""
    streams = ("search", "monte_carlo", "selection", "agreement", "disagreement")
    taken = {seed + SEED_OFFSETS[k] for k in streams}
    if training_seed in taken:
        raise InvalidInputError(
            f"TrainingRecipe.seed {training_seed} would replay a random stream of the "
            f"certificate (seed {seed} + 1, 3, 5, 6 or 7); use another training seed",
            param="--seed",
        )


def _part(name: str, delta: float, grid: int, description: str) -> DeltaPart:
    return DeltaPart(name, delta, grid, description)


def random_stream(seed: int, purpose: str, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed + SEED_OFFSETS[purpose])

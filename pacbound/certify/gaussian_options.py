"""What defines a Gaussian certificate before the data are seen: its options, δ budget and
random streams (``certify --method gaussian``; MATH.md §2–5, §8).

:func:`options_from_params` builds :class:`GaussianOptions` from the certify command's
parameters (the one place that does), :func:`options_from_report` from a report's
``options`` block (for ``verify``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pacbound.bounds import DeltaBudget, DeltaPart
from pacbound.bounds.budget import remaining_delta
from pacbound.bounds.validation import check_delta
from pacbound.errors import InvalidInputError, UsageError
from pacbound.posterior.families import FAMILIES, family
from pacbound.posterior.fit import TrainingRecipe
from pacbound.posterior.network import Sampler
from pacbound.posterior.priors import PriorMean, PriorTrainingRecipe, ScaleGrid
from pacbound.posterior.streams import DrawStream

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


#: ``--mc-draws``: how the certificate's Monte-Carlo risk draws from Q (MATH.md §3, §10).
#: ``per-example``: a fresh θ for every example of every pass (n·K draws); ``per-batch``: one
#: θ per batch of B examples (K·n/B draws, B the largest divisor of n not above the batch
#: size); ``auto``: per-example unless the per-example draws of one batch do not fit
#: ``--max-memory`` (resolved against the network, then recorded).
MC_DRAWS = ("auto", "per-example", "per-batch")


#: ``--max-memory`` units (binary and decimal; a bare number is bytes).
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_size(text: str | int | None) -> int | None:
    """``--max-memory``: ``"2GiB"``, ``"512MB"``, ``"1e9"`` → bytes; ``None``/``"auto"`` →
    ``None`` (the default: :func:`~pacbound.posterior.layers.default_max_memory`)."""
    if text is None or isinstance(text, int):
        return text
    raw = text.strip().lower().replace(" ", "")
    if raw == "auto":
        return None
    number = raw.rstrip("kmgtib")
    unit = raw[len(number) :]
    try:
        size = int(float(number) * _SIZE_UNITS[unit])
    except (KeyError, ValueError, OverflowError):  # unknown unit, not a number, inf
        size = 0
    if size <= 0:
        raise InvalidInputError(
            f"--max-memory {text!r}: give a positive size such as 2GiB, 512MiB or 1e9 (bytes)",
            param="--max-memory",
        )
    return size


#: Prior-scale grid size. The KL is very sensitive to σ_p when there are many weights
#: (a factor r in σ_p² off the optimum costs ≈ D(ln r)²/4 nats), so the grid is fine:
#: 6001 log-spaced values in [1e-6, 1] (ratio 1.0023) cost only ln 6001 ≈ 8.7 nats.
DEFAULT_GRID_SIZE = 6001


@dataclass(frozen=True)
class GaussianOptions:
    """Everything that defines a Gaussian certificate, fixed before the data are seen.

    ``posterior`` names a family of :data:`~pacbound.posterior.families.FAMILIES`;
    ``sampler`` ``None`` means "auto": the layers when every parameter-holding module has a
    layer sampler and nothing is tied or reused, else functional
    (:func:`~pacbound.posterior.network.auto_sampler`; the method also sends a ``.pt2``
    program to functional and records the choice)."""

    prior: PriorMean = PriorMean.INIT
    posterior: str = "isotropic"
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
    sampler: Sampler | None = Sampler.LAYERS
    #: bytes for per-example weight tensors (``--max-memory``); ``None``: the default,
    #: a fraction of the device's memory (resolved and recorded by the method)
    max_memory: int | None = None
    mc_draws: str = "auto"

    def __post_init__(self) -> None:
        family(self.posterior)  # an unknown family lists the valid ones
        if self.mc_draws not in MC_DRAWS:
            raise InvalidInputError(
                f"--mc-draws {self.mc_draws!r}: choose one of {', '.join(MC_DRAWS)}",
                param="--mc-draws",
            )

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
            "posterior": self.posterior,
            "prior_scales": self.prior_scales.to_dict(),
            "prior_fraction": self.prior_fraction if self.prior is PriorMean.DATA else None,
            "prior_training": self.prior_recipe.to_dict() if self.prior is PriorMean.DATA else None,
            "posterior_training": (
                self.training.to_dict() if FAMILIES[self.posterior].trained else None
            ),
            "mc_passes": self.mc_passes,
            "mc_delta": self.budget().part("monte-carlo").delta,
            "heldout_delta": self.delta if self.heldout_delta is None else self.heldout_delta,
            "disagreement_delta": self.resolved_disagreement_delta,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "search_examples": self.search_examples,
            "check_deterministic": self.check_deterministic,
            "sampler": "auto" if self.sampler is None else self.sampler.value,
            "max_memory": self.max_memory,
            "mc_draws": self.mc_draws,
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


def random_stream(seed: int, purpose: str) -> DrawStream:
    """The run's draw stream for ``purpose`` (``"search"``, ``"selection"``,
    ``"monte_carlo"``, ``"agreement"``, ``"disagreement"``): draws keyed by (seed, purpose,
    pass, example), independent across purposes (:mod:`pacbound.posterior.streams`)."""
    if purpose not in SEED_OFFSETS:
        raise ValueError(f"unknown random stream {purpose!r}")
    return DrawStream(seed, purpose)


def options_from_params(params: Mapping[str, Any]) -> GaussianOptions:
    """The options of ``certify --method gaussian`` from click's parsed parameters
    (``--sampler auto`` stays ``None`` until the model is loaded). Raises UsageError or
    InvalidInputError for a bad value, before anything is loaded."""
    if params["prior"] == PriorMean.INIT.value and params.get("init") is None:
        raise UsageError(
            "--prior init needs the initial weights: pass --init PATH (saved before training), "
            "or choose --prior zero or --prior data",
            param="--init",
        )
    sampler = params["sampler"]
    options = GaussianOptions(
        prior=PriorMean(params["prior"]),
        posterior=params["posterior"],
        prior_scales=ScaleGrid.parse(params["prior_scales"]),
        prior_fraction=params["prior_fraction"],
        prior_recipe=PriorTrainingRecipe(
            epochs=params["prior_epochs"],
            lr=params["prior_lr"],
            lr_schedule=params["prior_lr_schedule"],
            augment_shift=params["prior_augment_shift"],
            seed=params["seed"],
        ),
        training=TrainingRecipe(
            epochs=params["posterior_epochs"],
            lr=params["posterior_lr"],
            optimizer=params["posterior_optimizer"],
            keep_best=params["keep_best"],
            sigma_lr=params["sigma_lr"],
            p_min=params["p_min"],
            objective=params["objective"],
            seed=params["seed"],
        ),
        mc_passes=params["mc_passes"],
        delta=params["delta"],
        mc_delta=params["mc_delta"],
        heldout_delta=params["heldout_delta"],
        disagreement_delta=params["disagreement_delta"],
        seed=params["seed"],
        batch_size=params["batch_size"],
        check_deterministic=not params["allow_nondeterministic"],
        sampler=None if sampler == "auto" else Sampler(sampler),
        max_memory=parse_size(params.get("max_memory")),
        mc_draws=params.get("mc_draws") or "auto",
    )
    options.budget()  # validates the δ parts before any heavy work
    return options


def options_from_report(recorded: Mapping[str, Any]) -> GaussianOptions:
    """The options a report's ``options`` block records (InvalidInputError if unreadable).

    The prior-scale grid is rebuilt value for value (:meth:`ScaleGrid.from_dict`) and must
    hash to the recorded values: the δ it costs is then re-derived, never read."""
    try:
        grid = ScaleGrid.from_dict(dict(recorded["prior_scales"]))
        if grid.to_dict()["values_sha256"] != recorded["prior_scales"].get("values_sha256"):
            raise InvalidInputError(
                "the report's options.prior_scales do not describe the grid they hash to; "
                "the prior-scale grid and the δ it costs cannot be re-derived"
            )
        prior_training = recorded.get("prior_training")
        training = recorded.get("posterior_training")
        return GaussianOptions(
            prior=PriorMean(recorded["prior"]),
            posterior=recorded["posterior"],
            prior_scales=grid,
            prior_fraction=recorded.get("prior_fraction") or 0.5,
            prior_recipe=PriorTrainingRecipe(
                **{"lr_schedule": "constant", **(prior_training or {})}
            ),
            training=TrainingRecipe(**(training or {})),
            mc_passes=recorded["mc_passes"],
            delta=recorded["delta"],
            mc_delta=recorded["mc_delta"],
            heldout_delta=recorded["heldout_delta"],
            disagreement_delta=recorded["disagreement_delta"],
            seed=recorded["seed"],
            batch_size=recorded["batch_size"],
            search_examples=recorded["search_examples"],
            check_deterministic=recorded["check_deterministic"],
            sampler=Sampler(recorded["sampler"]),
            max_memory=recorded.get("max_memory"),  # absent before --max-memory: the default
            # resolved when recorded; a report from before --mc-draws drew per example
            mc_draws=recorded.get("mc_draws", "per-example"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInputError(
            f"the report's Gaussian options cannot be read by this version ({exc!r}); verify "
            "it with the pacbound version that wrote it"
        ) from None

"""The options of the compression (Occam) methods, ``subspace`` and ``quantize``: one frozen
dataclass, built from click's parsed parameters or from a report's ``options`` block, each in
one place (:func:`options_from_params`, :func:`options_from_report`).

Everything here is fixed before the data are seen. The predeclared (d, L) search is paid in
the code length (:mod:`pacbound.certify.occam`), so the δ budget has a single part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pacbound.bounds import DeltaBudget, DeltaPart
from pacbound.bounds.validation import check_count, check_delta
from pacbound.compressors import CodebookKind, CodebookPrecision, ProjectorKind
from pacbound.compressors.codebooks import check_levels, parse_enum
from pacbound.compressors.subspace import Optimizer
from pacbound.errors import InvalidInputError

SEARCH_PAYMENT = (
    "Occam binomial-tail inequality; the predeclared (d, L) search is paid in the code "
    "length (the header's prefix-free codes for seed, d and L; Kraft), so it needs no δ"
)
#: Offsets that give each random stream of a run its own seed.
SEED_OFFSETS = {"training": 1, "qat_subset": 2}


class CompressionMethod(str, Enum):
    SUBSPACE = "subspace"
    QUANTIZE = "quantize"


class SubspaceStart(str, Enum):
    """Where subspace training starts w: at 0, or at the least-squares projection of the
    checkpoint's θ − θ₀ (``--subspace-init``)."""

    ZERO = "zero"
    CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class SubspaceRecipe:
    """How w is trained (see :func:`pacbound.compressors.train_subspace`)."""

    epochs: int = 20
    lr: float = 1e-2
    batch_size: int = 128
    optimizer: Optimizer = Optimizer.ADAM
    lr_schedule: str = "constant"

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "optimizer": Optimizer(self.optimizer).value,
            "lr_schedule": self.lr_schedule,
        }


def _grid(values: int | Sequence[int], name: str) -> tuple[int, ...]:
    grid = (values,) if isinstance(values, int) else tuple(values)
    if not grid or len(set(grid)) != len(grid):
        raise InvalidInputError(f"{name} must be a non-empty list of distinct integers, got {grid}")
    return grid


def statement_deltas(
    delta: float, heldout_delta: float | None, disagreement_delta: float | None
) -> tuple[float, float]:
    """(δ_H, δ_D) with their defaults δ and δ/5, validated under the options' names."""
    h = delta if heldout_delta is None else check_delta(heldout_delta, "--heldout-delta")
    d = delta / 5 if disagreement_delta is None else disagreement_delta
    return h, check_delta(d, "--disagreement-delta")


@dataclass(frozen=True)
class CompressionOptions:
    """Everything that defines a compression certificate, fixed before the data are seen.

    ``d`` and ``levels`` are single values or predeclared lists; every (d, L) pair is tried
    and the smallest bound is reported (paid in the code length). ``d``, ``projector``,
    ``training`` and ``start`` only apply to ``subspace``, ``zero_level`` only to
    ``quantize``. ``heldout_delta`` and ``disagreement_delta`` are the δs of the separate
    statements about the checkpoint (default δ and δ/5).
    """

    method: CompressionMethod = CompressionMethod.SUBSPACE
    d: int | tuple[int, ...] = 1000
    levels: int | tuple[int, ...] = 8
    projector: ProjectorKind = ProjectorKind.KRONECKER
    codebook: CodebookKind = CodebookKind.KMEANS
    precision: CodebookPrecision = CodebookPrecision.FLOAT32
    zero_level: bool = False
    seed: int = 0
    training: SubspaceRecipe = field(default_factory=SubspaceRecipe)
    start: SubspaceStart = SubspaceStart.ZERO
    qat_steps: int = 0
    qat_lr: float = 1e-3
    qat_examples: int = 10000
    delta: float = 0.05
    heldout_delta: float | None = None
    disagreement_delta: float | None = None
    batch_size: int = 2048
    check_deterministic: bool = True

    def __post_init__(self) -> None:
        for name, enum in (
            ("method", CompressionMethod),
            ("projector", ProjectorKind),
            ("codebook", CodebookKind),
            ("precision", CodebookPrecision),
            ("start", SubspaceStart),
        ):
            object.__setattr__(self, name, parse_enum(enum, getattr(self, name), name))
        for L in self.levels_grid:
            check_levels(L)
        for d in self.d_grid:
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise InvalidInputError(f"d must be a positive integer, got {d!r}", param="d")
        check_delta(self.delta, "--delta")
        if self.seed < 0 or self.qat_steps < 0 or not self.qat_lr > 0:
            raise InvalidInputError(
                f"need seed ≥ 0, qat_steps ≥ 0, qat_lr > 0; got {self.seed}, {self.qat_steps}, "
                f"{self.qat_lr}"
            )
        check_count(self.qat_examples, "qat_examples")
        check_count(self.batch_size, "batch_size")
        held, disagreement = statement_deltas(
            self.delta, self.heldout_delta, self.disagreement_delta
        )
        object.__setattr__(self, "heldout_delta", held)
        object.__setattr__(self, "disagreement_delta", disagreement)

    @property
    def d_grid(self) -> tuple[int, ...]:
        return _grid(self.d, "d")

    @property
    def levels_grid(self) -> tuple[int, ...]:
        return _grid(self.levels, "levels")

    @property
    def statement_deltas(self) -> tuple[float, float]:
        """(δ_H, δ_D), resolved."""
        assert self.heldout_delta is not None and self.disagreement_delta is not None
        return self.heldout_delta, self.disagreement_delta

    def budget(self) -> DeltaBudget:
        return DeltaBudget(self.delta, (DeltaPart("occam", self.delta, 1, SEARCH_PAYMENT),))

    def to_dict(self) -> dict[str, Any]:
        """The certificate's own options (``results["options"]``)."""
        subspace = self.method is CompressionMethod.SUBSPACE
        return {
            "method": self.method.value,
            "d": list(self.d_grid) if subspace else None,
            "levels": list(self.levels_grid),
            "projector": self.projector.value if subspace else None,
            "codebook": self.codebook.value,
            "precision": self.precision.value,
            "zero_level": self.zero_level if not subspace else None,
            "seed": self.seed,
            "training": self.training.to_dict() if subspace else None,
            "qat": {"steps": self.qat_steps, "lr": self.qat_lr, "examples": self.qat_examples},
            "batch_size": self.batch_size,
            "check_deterministic": self.check_deterministic,
        }

    def report_options(self) -> dict[str, Any]:
        """The report's ``options`` block: :meth:`to_dict` and the δs of every statement."""
        held, disagreement = self.statement_deltas
        return {
            **self.to_dict(),
            "delta": self.delta,
            "heldout_delta": held,
            "disagreement_delta": disagreement,
        }


def options_from_params(params: Mapping[str, Any]) -> CompressionOptions:
    """The options of ``certify``/``compress --method subspace|quantize`` from click's parsed
    parameters (the one place that reads them)."""
    options = CompressionOptions(
        method=params["method"],
        d=params["d"] if params["d"] is not None else 1000,
        levels=params["levels"] if params["levels"] is not None else 8,
        projector=params["projector"],
        codebook=params["codebook"],
        precision=params["precision"],
        zero_level=params["zero_level"],
        seed=params["seed"],
        training=SubspaceRecipe(
            epochs=params["subspace_epochs"],
            lr=params["subspace_lr"],
            batch_size=params["subspace_batch_size"],
            optimizer=params["subspace_optimizer"],
            lr_schedule=params["subspace_lr_schedule"],
        ),
        start=params["subspace_init"],
        qat_steps=params["qat_steps"],
        qat_lr=params["qat_lr"],
        qat_examples=params["qat_examples"],
        delta=params["delta"],
        heldout_delta=params.get("heldout_delta"),
        disagreement_delta=params.get("disagreement_delta"),
        batch_size=params["batch_size"],
        check_deterministic=not params["allow_nondeterministic"],
    )
    if options.method is CompressionMethod.QUANTIZE and params.get("init") is not None:
        raise InvalidInputError(
            "--init applies to --method gaussian (prior mean) and subspace (θ₀) only; "
            "--method quantize codes the checkpoint's own weights: drop it",
            param="--init",
        )
    return options


def options_from_report(recorded: Mapping[str, Any]) -> CompressionOptions:
    """The same options from a report's ``options`` block (:meth:`CompressionOptions.
    report_options`); InvalidInputError when it is unreadable. ``start`` is not recorded (it
    describes how the hypothesis was chosen, which verify does not redo)."""
    try:
        training = recorded["training"]
        qat = recorded["qat"]
        return CompressionOptions(
            method=recorded["method"],
            d=1000 if recorded["d"] is None else tuple(recorded["d"]),
            levels=tuple(recorded["levels"]),
            projector=recorded["projector"] or ProjectorKind.KRONECKER,
            codebook=recorded["codebook"],
            precision=recorded["precision"],
            zero_level=bool(recorded["zero_level"]),
            seed=recorded["seed"],
            training=SubspaceRecipe() if training is None else SubspaceRecipe(**training),
            qat_steps=qat["steps"],
            qat_lr=qat["lr"],
            qat_examples=qat["examples"],
            delta=recorded["delta"],
            heldout_delta=recorded["heldout_delta"],
            disagreement_delta=recorded["disagreement_delta"],
            batch_size=recorded["batch_size"],
            check_deterministic=recorded["check_deterministic"],
        )
    except (KeyError, TypeError) as exc:
        raise InvalidInputError(
            f"the report's options block is not a compression run's ({exc!r} missing or "
            "malformed); the report was not written by certify --method subspace|quantize"
        ) from None

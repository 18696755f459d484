"""The certification-method interface: what every method of ``pacbound certify`` provides.

A method runs in two phases (``docs/architecture.md``):

1. **choose** the hypothesis with the data (prior training, posterior fitting, compression
   search) — whatever it likes, as long as the choice is paid for in the certificate;
2. **certify** a given hypothesis (Monte-Carlo risk or error count, KL or code length, the
   bound, the δ budget).

``certify`` runs both (:meth:`Method.run`); ``verify`` loads the saved hypothesis (posterior
file, artifact) and runs the *same* certify phase (:meth:`Method.rederive`), then compares
the results field by field. The registry of methods is
:data:`pacbound.certify.registry.METHODS`; the CLI's ``--method`` choices, the report
schema's enum, the option-applicability rules and the harness list are derived from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from pacbound.bounds import BoundResult, DeltaBudget
from pacbound.certify.common import ProgressFactory, Verdict, no_progress
from pacbound.errors import InvalidInputError

if TYPE_CHECKING:
    from pacbound.io.datasets import Dataset, Features
    from pacbound.io.models import LoadedModel


@dataclass(frozen=True)
class RunInputs:
    """What a method runs on, loaded and checked by the caller (the CLI or ``verify``).

    ``checkpoint`` is ``None`` only for a method that certifies without one (``marginal``:
    the architecture's prior conditioned on S); the others read it as :attr:`loaded`."""

    checkpoint: LoadedModel | None  # the checkpoint: module, provenance
    data: Dataset  # the training sample S
    heldout: Dataset | None = None  # labeled, never used for anything else
    unlabeled: Features | None = None  # inputs only, never used for anything else
    init: Path | None = None  # the --init file (weights saved before training)
    unsafe_allow_pickle: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: ProgressFactory = no_progress

    @property
    def loaded(self) -> LoadedModel:
        """The checkpoint of a method that needs one (the CLI refuses a run without it)."""
        if self.checkpoint is None:
            raise InvalidInputError("this method needs a CHECKPOINT; give its path")
        return self.checkpoint


@dataclass(frozen=True)
class HypothesisFile:
    """The file that holds a method's chosen hypothesis: what ``verify`` re-certifies."""

    key: str  # its record in the report: ``inputs.<key>`` ("posterior", "artifact")
    option: str  # the certify option that writes it ("--save-posterior", "--artifact")

    def record(
        self, path: Path, payload: bytes, note: str = "written by this run"
    ) -> dict[str, Any]:
        """The report's ``inputs.<key>`` record of the file written at ``path``."""
        return {
            "path": str(path),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload),
            "note": note,
        }


@dataclass(frozen=True)
class OptionRule:
    """A further condition, beyond the method, under which one of its options applies.

    ``holds(params)`` reads click's parsed parameters; ``needs`` says what the option needs
    beyond the method, *without* naming the method (``"--prior data"``), and ``has(params)``
    what this run has instead (``"--prior zero"``). The CLI composes the usage error
    (``pacbound.cli.applicability``): ``--prior-lr applies only with --prior data (--method
    gaussian), and this run has --prior zero: drop --prior-lr``; for an option several
    methods use, ``--method gaussian with --prior init or data, or --method subspace``."""

    needs: str
    holds: Callable[[Mapping[str, Any]], bool]
    has: Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True)
class Certificate:
    """One method's certificate: the same shape for every method.

    ``results`` is the report's ``results`` block (JSON-ready, full precision, no timings);
    ``hypothesis`` the chosen hypothesis serialised as the file :attr:`Method.hypothesis`
    names (posterior safetensors, compressed artifact)."""

    method: str
    bound: BoundResult
    budget: DeltaBudget
    verdict: Verdict
    results: Mapping[str, Any]
    hypothesis: bytes = field(repr=False)
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return self.bound.value

    def to_dict(self) -> dict[str, Any]:
        return dict(self.results)


@dataclass(frozen=True)
class MethodRun:
    """A certify run of one method: the certificate and what the report records about it."""

    certificate: Certificate
    options: Mapping[str, Any]  # the report's ``options`` block
    inputs: Mapping[str, Any] = field(default_factory=dict)  # records beyond model/data
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchCurve:
    """The recorded search over the choice (for plots): x, the estimated bound, the choice."""

    label: str
    x: tuple[float, ...]
    bound: tuple[float, ...]
    chosen: float | None
    log_x: bool = False


@dataclass(frozen=True)
class Facts:
    """What tables, plots, the terminal and the step summary show of one results block."""

    classifier: str  # short label of the certified classifier
    empirical_risk_upper: float  # the empirical-risk term the bound used
    kl_nats: float | None  # PAC-Bayes methods
    code_length_bits: int | None  # compression methods
    qualifiers: Mapping[str, str]  # e.g. {"prior": "data", "posterior": "Gaussian, diagonal"}
    risk_parts: tuple[tuple[str, float], ...]  # named parts adding up to empirical_risk_upper
    complexity_parts: tuple[tuple[str, float], ...]  # named nats of the complexity term
    search: SearchCurve | None
    rows: tuple[tuple[str, str], ...]  # extra (label, text) rows for terminal and summary
    title: str = ""  # the terminal table's title, e.g. "pacbound certificate (PAC-Bayes-kl, …)"
    #: values that are NOT bounds, for information (e.g. the bound an EP approximation of
    #: ln P(U) would give): plots draw them dashed and label them as approximations
    approximations: tuple[tuple[str, float], ...] = ()


class Method(Protocol):
    """A certification method (one module each; registered in ``certify.registry``)."""

    name: str
    description: str  # one line, for --help and docs
    hypothesis: HypothesisFile
    #: the certify/compress options this method uses (click parameter names), each with the
    #: further condition under which it applies (None: whenever the method is chosen)
    parameters: Mapping[str, OptionRule | None]
    #: dotted results fields that describe the choice and are not re-derived by ``verify``
    choice_fields: tuple[str, ...]
    #: whether a run needs a CHECKPOINT (``marginal`` certifies the architecture's prior)
    needs_checkpoint: bool
    #: relative tolerance ``verify`` allows between a reported and a re-derived float leaf:
    #: 0 (bit for bit) for methods whose floats come from fixed-order reductions; dense
    #: LAPACK factorisations (``marginal``) round differently with the BLAS thread count and
    #: CPU, so theirs agree only to ~1e-15 relative. Integers, strings and booleans always
    #: agree exactly.
    float_rel_tol: float

    def options(self, params: Mapping[str, Any]) -> Any:
        """The method's options (one frozen dataclass) from click's parsed parameters; raises
        UsageError/InvalidInputError for a bad value before anything is loaded."""
        ...

    def options_from_report(self, recorded: Mapping[str, Any]) -> Any:
        """The same options from a report's ``options`` block (InvalidInputError if
        unreadable)."""
        ...

    def run(self, inputs: RunInputs, options: Any) -> MethodRun:
        """Choose the hypothesis, then certify it (the certify phase :meth:`rederive` runs)."""
        ...

    def rederive(self, inputs: RunInputs, options: Any, hypothesis: bytes) -> Certificate:
        """Load a saved hypothesis and run the same certify phase as :meth:`run`."""
        ...

    def record_options(self, options: Any) -> Mapping[str, Any]:
        """The report's ``options`` block for ``options``, as :meth:`run` records it in
        :attr:`MethodRun.options`; a value resolved only once the inputs are loaded (e.g.
        ``--sampler auto``) is ``None``. ``verify`` compares the block of the recorded
        command line's options with the report's, leaf by leaf (``cli/verify_argv.py``)."""
        ...

    def facts(self, results: Mapping[str, Any]) -> Facts:
        """The rows this method contributes to tables, plots and summaries."""
        ...

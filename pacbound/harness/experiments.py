"""The coverage experiments by name, and which certification method each one tests.

Four experiments test pieces that certificates are built from rather than one method (the
held-out test-set bound, the Monte-Carlo bound with per-example and with per-batch draws,
per-example draws on sequences). The others
test the certificate of a registered certification method: the list of those is derived from
the registry :data:`pacbound.certify.registry.METHODS` (:func:`experiments_by_method`), so a
registered method without a coverage experiment shows up there with none (and the harness
tests refuse it), and an experiment of an unregistered method is not run.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from pacbound.certify.registry import METHODS
from pacbound.harness.coverage import CoverageExperiment
from pacbound.harness.gaussian_experiments import (
    GaussianDataExperiment,
    GaussianInitExperiment,
    GaussianPerBatchExperiment,
    MonteCarloExperiment,
    MonteCarloPerBatchExperiment,
)
from pacbound.harness.marginal_experiments import marginal_experiment
from pacbound.harness.planted import SequenceMonteCarloExperiment
from pacbound.harness.point_experiments import (
    COMPRESSORS,
    CompressionExperiment,
    HeldOutExperiment,
)
from pacbound.harness.synthetic import TeacherTask

Builder = Callable[..., CoverageExperiment]

#: Experiments of the pieces every certificate is built from (not of one method).
PIECE_EXPERIMENTS: dict[str, Builder] = {
    "heldout": HeldOutExperiment,
    "monte-carlo": MonteCarloExperiment,
    "monte-carlo-per-batch": MonteCarloPerBatchExperiment,
    "sequence-linear": SequenceMonteCarloExperiment,
}

#: The experiments of each certification method's certificate, by its registered name.
_METHOD_EXPERIMENTS: dict[str, dict[str, Builder]] = {
    "gaussian": {
        "gaussian-init": GaussianInitExperiment,
        "gaussian-data": GaussianDataExperiment,
        "gaussian-per-batch": GaussianPerBatchExperiment,
    },
    **{kind: {kind: partial(CompressionExperiment, kind=kind)} for kind in COMPRESSORS},
    "marginal": {"marginal-gp-teacher": marginal_experiment},
}


def experiments_by_method() -> dict[str, tuple[str, ...]]:
    """Every registered certification method → the names of the coverage experiments of its
    certificate (empty: the harness does not test that method yet)."""
    return {name: tuple(_METHOD_EXPERIMENTS.get(name, {})) for name in METHODS}


def _builders() -> dict[str, Builder]:
    out = dict(PIECE_EXPERIMENTS)
    for method in METHODS:
        out.update(_METHOD_EXPERIMENTS.get(method, {}))
    return out


def coverage_experiments() -> tuple[str, ...]:
    """The names of every experiment the harness runs: the pieces', then each registered
    method's."""
    return tuple(_builders())


def make_experiment(name: str, task: TeacherTask, **kwargs: Any) -> CoverageExperiment:
    """The coverage experiment called ``name`` with its tight-regime defaults."""
    builders = _builders()
    if name not in builders:
        raise ValueError(f"unknown coverage experiment {name!r}; valid: {', '.join(builders)}")
    return builders[name](task, **kwargs)

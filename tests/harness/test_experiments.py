"""The harness's list of coverage experiments is derived from the method registry."""

from __future__ import annotations

import pytest

from pacbound.certify.registry import METHODS
from pacbound.harness import experiments as experiments_module
from pacbound.harness.experiments import (
    PIECE_EXPERIMENTS,
    coverage_experiments,
    experiments_by_method,
    make_experiment,
)
from pacbound.harness.point_experiments import CompressionExperiment
from pacbound.harness.synthetic import TeacherTask

TASK = TeacherTask()


def test_every_registered_method_has_a_coverage_experiment() -> None:
    by_method = experiments_by_method()
    assert list(by_method) == list(METHODS)
    assert {name for name, experiments in by_method.items() if not experiments} == set()


def test_the_list_is_the_pieces_then_each_registered_methods_experiments() -> None:
    derived = [e for experiments in experiments_by_method().values() for e in experiments]
    assert coverage_experiments() == (*PIECE_EXPERIMENTS, *derived)
    assert PIECE_EXPERIMENTS.keys() == {
        "heldout",
        "monte-carlo",
        "monte-carlo-per-batch",
        "sequence-linear",
    }
    for name in coverage_experiments():
        assert make_experiment(name, TASK).name == name


def test_follows_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # a registry without quantize and with a new method, swapped in for the harness alone
    # (deleting and restoring an entry of the real registry would reorder it for later tests)
    registry = {name: m for name, m in METHODS.items() if name != "quantize"}
    registry["newmethod"] = METHODS["subspace"]
    monkeypatch.setattr(experiments_module, "METHODS", registry)
    assert "quantize" not in coverage_experiments()
    assert experiments_by_method()["newmethod"] == ()
    with pytest.raises(ValueError, match=r"unknown coverage experiment 'quantize'; valid: heldout"):
        make_experiment("quantize", TASK)


def test_a_compression_experiment_needs_a_compressor() -> None:
    with pytest.raises(ValueError, match=r"no compressor .* 'prune'; valid: quantize, subspace"):
        CompressionExperiment(TASK, kind="prune")


def test_every_experiment_takes_the_options_the_coverage_benchmark_passes() -> None:
    """``benchmarks/bench_coverage.py`` builds every experiment with ``delta``,
    ``truth_examples`` and ``seed``: each builder must accept them (the marginal experiment
    did not, and the benchmark crashed after an hour of the other experiments)."""
    for name in coverage_experiments():
        experiment = make_experiment(name, TASK, delta=0.05, truth_examples=1000, seed=3)
        assert experiment.name == name
        assert experiment.delta <= 0.05 and experiment.delta == pytest.approx(0.05)

"""Planted models (issue #11): each way a user's own architecture broke a certificate is now
refused or certified soundly (MATH.md §9, §10)."""

from __future__ import annotations

from pacbound.harness import controls
from pacbound.harness.coverage import CORRECT, run_coverage
from pacbound.harness.experiments import make_experiment
from pacbound.harness.planted import planted_refusals
from pacbound.harness.synthetic import TeacherTask

TASK = TeacherTask()


def test_tied_and_memorizing_models_are_refused_on_random_labels() -> None:
    """The Gaussian method refuses both; the quantize method codes the memorised table
    exactly (issue #13) and pays for it: its bound stays above the true risk 1 − 1/K."""
    outcomes = planted_refusals(TASK)
    assert [(o["model"], o["method"]) for o in outcomes] == [
        ("tied weight", "gaussian"),
        ("integer buffer memorising the labels", "gaussian"),
        ("integer buffer memorising the labels", "quantize"),
    ]
    assert all(o["refused"] for o in outcomes[:2]), outcomes
    assert "out.weight = dummy.weight" in outcomes[0]["message"]
    assert "keys (int64), labels (int64)" in outcomes[1]["message"]
    assert not outcomes[2]["refused"]
    assert outcomes[2]["bound"] >= 1 - 1 / TASK.num_classes


def test_sequence_linear_is_certified_soundly_and_the_old_sampler_is_caught() -> None:
    """Per-example draws on a (B, T, F) Linear against whole-network draws: the correct
    Monte-Carlo bound covers L(Q); per-position noise (the earlier sampler) does not."""
    experiment = make_experiment("sequence-linear", TASK, delta=0.01, truth_examples=200_000)
    results = run_coverage(experiment, 100)
    correct, old = results[CORRECT], results[controls.PER_POSITION]
    assert correct.sound and correct.violations <= 3
    assert not old.sound and old.violations >= 50
    assert old.mean_bound < old.mean_truth < correct.mean_bound

"""The compression methods as registered methods (``certify.registry.METHODS``): options
from click's parameters and from a report in one place each, run = choose + the certify phase
that ``rederive`` runs on the saved artifact, and the facts tables and summaries show."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from pacbound.certify.method import RunInputs
from pacbound.certify.occam_options import CompressionOptions, SubspaceStart
from pacbound.certify.registry import METHODS
from pacbound.errors import InvalidInputError
from pacbound.io import load_dataset, load_model
from tests.report._tiny import ARCH_KWARGS, make_task

#: click's parsed parameters of ``certify --method subspace`` with its defaults
PARAMS: dict[str, Any] = {
    "method": "subspace",
    "d": (20, 40),
    "levels": (4, 8),
    "projector": "kronecker",
    "codebook": "kmeans",
    "precision": "float32",
    "zero_level": False,
    "seed": 3,
    "subspace_epochs": 2,
    "subspace_lr": 0.05,
    "subspace_batch_size": 64,
    "subspace_optimizer": "adam",
    "subspace_lr_schedule": "constant",
    "subspace_init": "zero",
    "qat_steps": 2,
    "qat_examples": 10000,
    "qat_lr": 1e-3,
    "delta": 0.05,
    "heldout_delta": None,
    "disagreement_delta": None,
    "batch_size": 1024,
    "allow_nondeterministic": False,
    "init": None,
}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("occam_method"))


def _inputs(task: Path, **extra: Any) -> RunInputs:
    loaded = load_model(task / "final.safetensors", arch="mlp", arch_kwargs=ARCH_KWARGS)
    return RunInputs(checkpoint=loaded, data=load_dataset(task / "train.npz"), **extra)


def test_both_methods_are_registered_with_an_artifact_hypothesis() -> None:
    for name in ("subspace", "quantize"):
        method = METHODS[name]
        assert method.name == name
        assert (method.hypothesis.key, method.hypothesis.option) == ("artifact", "--artifact")
        assert method.choice_fields == ("search", "compression.start")
    assert "d" in METHODS["subspace"].parameters and "d" not in METHODS["quantize"].parameters
    assert "zero_level" in METHODS["quantize"].parameters
    assert "init" in METHODS["subspace"].parameters and "init" not in METHODS["quantize"].parameters
    assert all(rule is None for rule in METHODS["subspace"].parameters.values())


@pytest.mark.parametrize("name", ["subspace", "quantize"])
def test_options_round_trip_through_the_report(name: str) -> None:
    method = METHODS[name]
    options = method.options({**PARAMS, "method": name, "disagreement_delta": 0.02})
    assert isinstance(options, CompressionOptions)
    assert options.statement_deltas == (0.05, 0.02)
    recorded = options.report_options()
    assert recorded["delta"] == 0.05 and recorded["heldout_delta"] == 0.05
    again = method.options_from_report(recorded)
    assert again.report_options() == recorded
    assert again.to_dict() == options.to_dict()


def test_options_from_params_reads_every_parameter() -> None:
    options = METHODS["subspace"].options({**PARAMS, "subspace_init": "checkpoint"})
    assert options.d_grid == (20, 40) and options.levels_grid == (4, 8)
    assert options.start is SubspaceStart.CHECKPOINT
    assert options.training.epochs == 2 and options.batch_size == 1024
    tuned = METHODS["subspace"].options({**PARAMS, "qat_examples": 300, "qat_lr": 0.02})
    assert (tuned.qat_examples, tuned.qat_lr) == (300, 0.02)
    assert tuned.report_options()["qat"] == {"steps": 2, "lr": 0.02, "examples": 300}
    nondeterministic = METHODS["subspace"].options({**PARAMS, "allow_nondeterministic": True})
    assert not nondeterministic.check_deterministic
    with pytest.raises(InvalidInputError, match="--method quantize codes the checkpoint's own"):
        METHODS["quantize"].options({**PARAMS, "method": "quantize", "init": "init.safetensors"})
    with pytest.raises(InvalidInputError, match="not a compression run's"):
        METHODS["quantize"].options_from_report({"method": "gaussian", "delta": 0.05})


@pytest.mark.parametrize("name", ["subspace", "quantize"])
def test_run_and_rederive_agree_on_every_field_but_the_choice(task: Path, name: str) -> None:
    method = METHODS[name]
    held = load_dataset(task / "test.npz")
    inputs = _inputs(task, heldout=held)
    options = method.options({**PARAMS, "method": name})
    run = method.run(inputs, options)
    cert = run.certificate
    assert cert.method == name and run.options == options.report_options()
    assert run.inputs == {} and run.warnings == ()
    res = cert.results
    assert res["heldout"]["n"] == 200 and res["checkpoint"]["disagreement"]["source"] == "heldout"
    again = method.rederive(_inputs(task, heldout=held), options, cert.hypothesis)
    choice = ("search", "compression")
    assert {k: v for k, v in again.results.items() if k not in choice} == {
        k: v for k, v in res.items() if k not in choice
    }
    assert again.results["compression"] == {**res["compression"], "start": "artifact"}
    assert again.value == cert.value and again.hypothesis == cert.hypothesis
    # a damaged artifact is refused by the same phase
    with pytest.raises(InvalidInputError, match=r"corrupted|truncated"):
        method.rederive(_inputs(task), options, cert.hypothesis[:-1])


def test_subspace_init_file_is_recorded_and_refused_when_trained(task: Path) -> None:
    method = METHODS["subspace"]
    options = method.options({**PARAMS, "d": 20, "levels": 4})
    run = method.run(_inputs(task, init=task / "init.safetensors"), options)
    record = run.inputs["init"]
    assert record["path"] == str(task / "init.safetensors") and len(record["sha256"]) == 64
    assert len(record["theta0_sha256"]) == 64
    with pytest.raises(InvalidInputError, match="--init"):
        method.run(_inputs(task, init=task / "final.safetensors"), options)


def test_facts_show_the_decoded_models_rows(task: Path) -> None:
    method = METHODS["quantize"]
    res = method.run(_inputs(task), method.options({**PARAMS, "method": "quantize"})).certificate
    results = res.results
    facts = method.facts(results)
    emp = results["empirical_risk"]
    assert facts.classifier == "decoded quantized model"
    assert facts.empirical_risk_upper == emp["upper_bound"] == results["errors"] / results["n"]
    assert facts.kl_nats is None and facts.code_length_bits == results["code_length_bits"]
    per_choice = results["delta_budget"]["parts"][0]["per_choice"]
    assert dict(facts.complexity_parts) == {
        "code length K ln 2": results["code_length_nats"],
        "δ term ln(1/δ)": math.log(1.0 / per_choice),
    }
    assert facts.search is not None and facts.search.chosen == results["code_length_bits"]
    # two L, each with a shared and a per-tensor codebook candidate
    assert sorted(facts.search.x) == list(facts.search.x) and len(facts.search.x) == 4
    rows = dict(facts.rows)
    assert rows["n (training examples)"] == "400"
    assert rows["errors of the decoded model"] == f"{emp['errors']} ({emp['estimate']:.6f})"
    assert rows["code length"] == f"{results['code_length_bits']} bits"
    assert rows["compression"].startswith("direct: d = 74, L = ")  # D = 6·8 + 8 + 8·2 + 2
    assert "errors of the checkpoint" in rows and "held-out bound (checkpoint)" not in rows


def test_verify_artifact_options_come_from_the_report(task: Path) -> None:
    from pacbound.certify.occam_method import artifact_options
    from pacbound.compressors import CompressedMessage

    method = METHODS["quantize"]
    options = method.options({**PARAMS, "method": "quantize", "levels": (4,)})
    run = method.run(_inputs(task), options)
    message = CompressedMessage.from_bytes(run.certificate.hypothesis)
    recorded = run.options
    from_report = artifact_options(message, recorded, delta=0.05, batch_size=1024)
    assert from_report.to_dict() == options.to_dict()
    alone = artifact_options(message, {}, delta=0.1, batch_size=7)
    assert (alone.method.value, alone.delta, alone.batch_size) == ("quantize", 0.1, 7)

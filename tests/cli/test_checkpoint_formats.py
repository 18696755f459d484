"""The checkpoints users really have, end to end: Lightning-style nested and prefixed state
dicts (--strip-prefix), torch.export .pt2 programs and whole pickled models, through
certify, inspect and verify (CliRunner; exit codes and one-line errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file

from pacbound.cli.main import cli
from pacbound.models import mlp
from tests.report._tiny import ARCH_KWARGS, make_task

ARCH = ["--arch", "mlp", "--arch-kwargs", json.dumps(ARCH_KWARGS)]
GAUSSIAN = ["--prior-scales", "1e-3:1:61", "--mc-passes", "2"]
QUANTIZE = ["--method", "quantize", "--levels", "4"]
SUBSPACE = ["--method", "subspace", "--d", "20", "--levels", "8", "--subspace-epochs", "2"]


def _model(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = mlp(**ARCH_KWARGS)  # type: ignore[arg-type]
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_task(tmp_path_factory.mktemp("formats"))
    final, init = (
        load_file(str(root / "final.safetensors")),
        load_file(str(root / "init.safetensors")),
    )
    for name, state, extra in (("lightning", final, 12), ("lightning_init", init, 0)):
        torch.save(
            {
                "state_dict": {f"model.{k}": v for k, v in state.items()},
                "epoch": extra,
                "global_step": 10 * extra,
                "pytorch-lightning_version": "2.4.0",
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
            },
            root / f"{name}.ckpt",
        )
    program = torch.export.export(
        _model(final), (torch.rand(3, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, root / "program.pt2")
    torch.save(_model(final), root / "whole.pt")
    return root


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def certify(task: Path, checkpoint: str, *extra: str) -> Result:
    return invoke(
        "certify", str(task / checkpoint), "--data", str(task / "train.npz"), "--quiet", *extra
    )


def one_line_error(result: Result, code: int = 3) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    error = [line for line in lines if not line.startswith("Warning:")]
    assert len(error) == 1 and error[0].startswith("Error: "), result.stderr
    assert len(error[0]) < 400
    return error[0]


def verify(report: Path, *extra: str) -> Result:
    return invoke("verify", str(report), "--json", *extra)


def assert_verifies(report: Path, *extra: str) -> None:
    result = verify(report, *extra)
    assert result.exit_code == 0, result.output
    assert all(f["agree"] for f in json.loads(result.stdout)["fields"])


# --- Lightning-style checkpoints: --strip-prefix ------------------------------------------


def test_prefixed_names_suggest_the_exact_strip_prefix(task: Path) -> None:
    error = one_line_error(certify(task, "lightning.ckpt", *ARCH, *QUANTIZE))
    assert "lightning.ckpt" in error
    assert error.endswith("pass --strip-prefix model.")
    assert "'model.1.weight' for '1.weight'" in error


def test_lightning_checkpoint_certifies_and_verifies(task: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    made = certify(
        task,
        "lightning.ckpt",
        *ARCH,
        "--strip-prefix",
        "model.",
        *QUANTIZE,
        "--output",
        str(report),
        "--artifact",
        str(tmp_path / "q.bin"),
    )
    assert made.exit_code == 0, made.output
    checkpoint = json.loads(report.read_text())["inputs"]["model"]["provenance"]["checkpoint"]
    assert checkpoint["nested_key"] == "state_dict"
    assert checkpoint["stripped_prefix"] == "model."
    assert checkpoint["format"] == "torch" and checkpoint["unsafe_pickle"] is False
    assert_verifies(report)


def test_strip_prefix_applies_to_init_and_verify_reproduces_it(task: Path, tmp_path: Path) -> None:
    """The Gaussian prior's init file carries the same prefix; verify re-reads both."""
    report = tmp_path / "report.json"
    made = certify(
        task,
        "lightning.ckpt",
        *ARCH,
        "--strip-prefix",
        "model.",
        "--init",
        str(task / "lightning_init.ckpt"),
        *GAUSSIAN,
        "--output",
        str(report),
        "--save-posterior",
        str(tmp_path / "post.safetensors"),
    )
    assert made.exit_code == 0, made.output
    # Same certificate as from the plain safetensors files.
    plain = certify(
        task,
        "final.safetensors",
        *ARCH,
        "--init",
        str(task / "init.safetensors"),
        *GAUSSIAN,
        "--json",
    )
    assert plain.exit_code == 0, plain.output
    assert json.loads(report.read_text())["results"] == json.loads(plain.stdout)["results"]
    assert_verifies(report)


def test_subspace_init_file_loses_the_prefix_too(task: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    made = certify(
        task,
        "lightning.ckpt",
        *ARCH,
        "--strip-prefix",
        "model.",
        "--init",
        str(task / "lightning_init.ckpt"),
        *SUBSPACE,
        "--output",
        str(report),
        "--artifact",
        str(tmp_path / "s.bin"),
    )
    assert made.exit_code == 0, made.output
    assert_verifies(report)


def test_strip_prefix_that_starts_no_name_is_refused(task: Path) -> None:
    error = one_line_error(
        certify(task, "lightning.ckpt", *ARCH, "--strip-prefix", "modle.", *QUANTIZE)
    )
    assert "--strip-prefix 'modle.' starts none of its tensor names (e.g. 'model." in error


def test_inspect_with_strip_prefix_loads(task: Path) -> None:
    result = invoke(
        "inspect", str(task / "lightning.ckpt"), *ARCH, "--strip-prefix", "model.", "--json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["loads"] is True and doc["checkpoint"]["stripped_prefix"] == "model."
    assert sorted(t["name"] for t in doc["tensors"]) == ["1.bias", "1.weight", "3.bias", "3.weight"]


def test_inspect_without_arch_points_at_the_shared_prefix(task: Path) -> None:
    table = invoke("inspect", str(task / "lightning.ckpt"))
    assert table.exit_code == 0, table.output
    assert "'model.' (try --strip-prefix model.)" in table.stdout
    doc = json.loads(invoke("inspect", str(task / "lightning.ckpt"), "--json").stdout)
    assert doc["common_prefix"] == "model."
    plain = json.loads(invoke("inspect", str(task / "final.safetensors"), "--json").stdout)
    assert plain["common_prefix"] is None


# --- torch.export programs (.pt2) ----------------------------------------------------------


def test_pt2_gaussian_draws_the_whole_parameter_vector_per_example(
    task: Path, tmp_path: Path
) -> None:
    """Used to exit 5 (NotImplementedError from the program's eval()), then was refused: a
    program's graph has no layers to replace. --sampler auto uses the functional sampler."""
    report = tmp_path / "report.json"
    post = tmp_path / "posterior.safetensors"
    made = certify(
        task,
        "program.pt2",
        "--prior",
        "zero",
        *GAUSSIAN,
        "--output",
        str(report),
        "--save-posterior",
        str(post),
    )
    assert made.exit_code == 0, made.output
    doc = json.loads(report.read_text())
    assert doc["options"]["sampler"] == "functional"
    assert 0.0 < doc["results"]["bound"] < 1.0
    assert_verifies(report)
    # the same weights from the state dict through the same sampler: the draws are keyed by
    # parameter name (the program keeps the module's), so the whole results block is equal
    plain = certify(
        task, "final.safetensors", *ARCH, "--prior", "zero", *GAUSSIAN, "--sampler", "functional",
        "--json",
    )  # fmt: skip
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["results"] == doc["results"]


def test_pt2_quantize_certifies_and_verifies(task: Path, tmp_path: Path) -> None:
    """Used to exit 3 asking for --arch, which a .pt2 refuses."""
    report = tmp_path / "report.json"
    made = certify(
        task, "program.pt2", *QUANTIZE, "--output", str(report), "--artifact", str(tmp_path / "a")
    )
    assert made.exit_code == 0, made.output
    doc = json.loads(report.read_text())
    assert doc["inputs"]["model"]["provenance"]["architecture"] is None
    assert doc["inputs"]["model"]["provenance"]["checkpoint"]["format"] == "pt2"
    # the same weights coded from the state dict give the same certificate
    plain = certify(task, "final.safetensors", *ARCH, *QUANTIZE, "--json")
    assert plain.exit_code == 0, plain.output
    for key in ("bound", "errors", "code_length_bits"):
        assert doc["results"][key] == json.loads(plain.stdout)["results"][key]
    assert_verifies(report)


def test_pt2_subspace_needs_init_and_then_verifies(task: Path, tmp_path: Path) -> None:
    error = one_line_error(certify(task, "program.pt2", *SUBSPACE))
    assert "no reset_parameters() re-draws 1.weight" in error
    assert "pass --init PATH" in error and "--method quantize" in error
    report = tmp_path / "report.json"
    made = certify(
        task,
        "program.pt2",
        *SUBSPACE,
        "--init",
        str(task / "init.safetensors"),
        "--output",
        str(report),
        "--artifact",
        str(tmp_path / "s.bin"),
    )
    assert made.exit_code == 0, made.output
    assert json.loads(report.read_text())["results"]["errors"] < 200
    assert_verifies(report)


def test_pt2_refuses_strip_prefix_and_arch_as_usage_errors(task: Path) -> None:
    error = one_line_error(
        certify(task, "program.pt2", "--strip-prefix", "model.", *QUANTIZE), code=2
    )
    assert "torch.export program" in error and "drop --strip-prefix" in error
    error = one_line_error(certify(task, "program.pt2", *ARCH, *QUANTIZE), code=2)
    assert "self-contained torch.export program; drop --arch" in error
    error = one_line_error(invoke("inspect", str(task / "program.pt2"), "--arch", "mlp"), code=2)
    assert "drop --arch" in error


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda net: torch.export.export(net.eval(), (torch.rand(4, 6),)), "fixed batch size of 4"),
        (
            lambda net: torch.export.export(
                torch.nn.Sequential(net, torch.nn.BatchNorm1d(2)).train(),
                (torch.rand(4, 6),),
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            ),
            "exported in training mode (batch_norm)",
        ),
    ],
)
def test_pt2_that_is_not_a_per_example_classifier_is_refused(
    tmp_path: Path, make: object, message: str
) -> None:
    """A fixed batch size would fail inside the graph (exit 5); training-mode BatchNorm
    makes each prediction depend on the rest of the batch."""
    torch.manual_seed(0)
    path = tmp_path / "p.pt2"
    torch.export.save(make(mlp(**ARCH_KWARGS)), path)  # type: ignore[operator,arg-type]
    error = one_line_error(invoke("inspect", str(path)))
    assert message in error and "dynamic_shapes" in error


# --- whole pickled models: torch.save(model) ------------------------------------------------


def test_whole_pickle_is_refused_without_the_flag(task: Path) -> None:
    error = one_line_error(certify(task, "whole.pt", *QUANTIZE))
    assert "--unsafe-allow-pickle" in error


def test_whole_pickle_needs_no_arch(task: Path, tmp_path: Path) -> None:
    """Used to exit 3 asking for a redundant --arch."""
    report = tmp_path / "report.json"
    made = certify(
        task,
        "whole.pt",
        "--unsafe-allow-pickle",
        "--prior",
        "zero",
        *GAUSSIAN,
        "--output",
        str(report),
        "--save-posterior",
        str(tmp_path / "post.safetensors"),
    )
    assert made.exit_code == 0, made.output
    assert "Warning: --unsafe-allow-pickle" in made.stderr
    prov = json.loads(report.read_text())["inputs"]["model"]["provenance"]
    assert prov["architecture"] is None and prov["checkpoint"]["unsafe_pickle"] is True
    assert_verifies(report, "--unsafe-allow-pickle")


def test_whole_pickle_subspace_resets_its_own_layers(task: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    made = certify(
        task,
        "whole.pt",
        "--unsafe-allow-pickle",
        *SUBSPACE,
        "--output",
        str(report),
        "--artifact",
        str(tmp_path / "s.bin"),
    )
    assert made.exit_code == 0, made.output
    # θ₀ is the seeded re-initialisation, exactly as --arch mlp would give it
    plain = certify(task, "final.safetensors", *ARCH, *SUBSPACE, "--json")
    assert plain.exit_code == 0, plain.output
    mine, theirs = json.loads(report.read_text())["results"], json.loads(plain.stdout)["results"]
    assert mine["bound"] == theirs["bound"] and mine["errors"] == theirs["errors"]
    assert_verifies(report, "--unsafe-allow-pickle")


def test_whole_pickle_refuses_arch_kwargs_without_arch(task: Path) -> None:
    result = certify(
        task, "whole.pt", "--unsafe-allow-pickle", "--arch-kwargs", '{"hidden": [8]}', *QUANTIZE
    )
    error = one_line_error(result, code=2)
    assert "holds a whole model" in error and "drop --arch-kwargs" in error


def test_inspect_whole_pickle(task: Path) -> None:
    result = invoke("inspect", str(task / "whole.pt"), "--unsafe-allow-pickle")
    assert result.exit_code == 0, result.output
    assert "yes, into the pickled model itself" in result.stdout

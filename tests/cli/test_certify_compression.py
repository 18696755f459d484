"""`certify --method subspace|quantize` and `compress`: what they say about the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pacbound.bounds import format_up
from pacbound.bounds import test_set_bound as heldout_bound
from pacbound.bounds.checkpoint import checkpoint_bound, disagreement_bound
from pacbound.certify.factories import architecture_factory
from pacbound.certify.occam import decoder_for
from pacbound.cli.main import cli
from pacbound.compressors import CompressedMessage
from pacbound.models import mlp
from tests.report._tiny import ARCH_KWARGS, make_task


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("certify_compression"))


def _args(
    task: Path, method: str, *extra: str, kwargs: dict[str, object] = ARCH_KWARGS
) -> list[str]:
    return [
        "certify",
        str(task / "final.safetensors"),
        "--method",
        method,
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(kwargs),
        "--data",
        str(task / "train.npz"),
        "--quiet",
        *extra,
    ]


QUANTIZE = ("--levels", "2,4")
SUBSPACE = ("--d", "20", "--levels", "4", "--subspace-epochs", "3")


def _checkpoint_and_decoded(task: Path, artifact: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    from safetensors.torch import load_file

    model = mlp(**ARCH_KWARGS)  # type: ignore[arg-type]
    model.load_state_dict(load_file(str(task / "final.safetensors")))
    data = artifact.read_bytes()
    factory = architecture_factory("mlp", ARCH_KWARGS)
    decoded = decoder_for(CompressedMessage.from_bytes(data), factory).decompress(data)
    return model.eval(), decoded.eval()


def _predict(model: torch.nn.Module, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(x).float()).argmax(dim=1)


@pytest.mark.parametrize(("method", "extra"), [("quantize", QUANTIZE), ("subspace", SUBSPACE)])
def test_heldout_gives_the_checkpoints_bound_and_certificate(
    task: Path, tmp_path: Path, method: str, extra: tuple[str, ...]
) -> None:
    art = tmp_path / "m.pbcm"
    runner = CliRunner()
    plain = runner.invoke(cli, _args(task, method, *extra, "--json"))
    args = _args(task, method, *extra, "--artifact", str(art), "--heldout", str(task / "test.npz"))
    result = runner.invoke(cli, [*args, "--json"])
    assert plain.exit_code == 0 and result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)["results"]
    # The held-out data never touch the Occam certificate of the decoded model.
    assert res["bound"] == json.loads(plain.stdout)["results"]["bound"]
    checkpoint, decoded = _checkpoint_and_decoded(task, art)
    with np.load(task / "test.npz") as archive:
        test = dict(archive)
    pred = _predict(checkpoint, test["x"])
    errors = int((pred != torch.from_numpy(test["y"])).sum())
    k = int((pred != _predict(decoded, test["x"])).sum())
    assert res["heldout"] == {
        "certified_classifier": "the checkpoint's deterministic point weights",
        "bound": heldout_bound(errors / 200, n=200, delta=0.05).value,
        "errors": errors,
        "n": 200,
        "delta": 0.05,
        "note": "a separate statement with its own delta",
    }
    block = res["checkpoint"]
    disagreement = disagreement_bound(k, m=200, delta=0.01)
    assert block["disagreement"]["disagreements"] == k
    assert block["disagreement"]["source"] == "heldout"
    assert block["disagreement"]["upper_bound"] == disagreement.value
    assert block["bound_on_certified"] == res["bound"]
    assert block["delta_total"] == 0.05 + 0.01
    assert block["bound"] >= min(1.0, res["bound"] + disagreement.value)
    with np.load(task / "train.npz") as archive:
        train = dict(archive)
    tpred = _predict(checkpoint, train["x"])
    on_training = res["checkpoint_on_training"]
    assert on_training["errors"] == int((tpred != torch.from_numpy(train["y"])).sum())
    assert on_training["disagreements_with_decoded"] == int(
        (tpred != _predict(decoded, train["x"])).sum()
    )
    assert on_training["n"] == 400
    options = json.loads(result.stdout)["options"]
    assert (options["heldout_delta"], options["disagreement_delta"]) == (0.05, 0.01)
    # The table shows both statements, rounded up.
    table = runner.invoke(cli, args)
    assert table.exit_code == 0, table.stderr
    text = " ".join(table.stdout.split())
    assert f"held-out bound (checkpoint) │ {format_up(res['heldout']['bound'], 4)}" in text
    assert f"bound on the checkpoint itself │ {format_up(block['bound'], 4)}" in text
    assert f"{k}/200 heldout inputs" in text


def test_checkpoint_certificate_is_the_sum_of_its_parts(task: Path) -> None:
    result = CliRunner().invoke(
        cli,
        _args(
            task,
            "quantize",
            *QUANTIZE,
            "--heldout",
            str(task / "test.npz"),
            "--heldout-delta",
            "0.02",
            "--json",
        ),
    )
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)["results"]
    assert res["heldout"]["delta"] == 0.02
    from pacbound.bounds import BoundResult

    d = res["checkpoint"]["disagreement"]
    occam = BoundResult(**{**res["certificate_terms"], "terms": {}})
    expected = checkpoint_bound(occam, disagreement_bound(d["disagreements"], m=200, delta=0.01))
    assert res["checkpoint"]["bound"] == expected.value


def test_bad_heldout_delta_is_one_line(task: Path) -> None:
    result = CliRunner().invoke(
        cli, _args(task, "quantize", "--heldout", str(task / "test.npz"), "--heldout-delta", "1.5")
    )
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: --heldout-delta must be in (0, 1)")
    assert len(result.stderr.strip().splitlines()) == 1


def _compress_args(task: Path, art: Path, *extra: str) -> list[str]:
    return [
        "compress",
        str(task / "final.safetensors"),
        "--method",
        "quantize",
        "--levels",
        "2",
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(ARCH_KWARGS),
        "--data",
        str(task / "train.npz"),
        "-o",
        str(art),
        "--quiet",
        *extra,
    ]


def test_compress_shows_the_training_comparison(task: Path, tmp_path: Path) -> None:
    art = tmp_path / "m.pbcm"
    result = CliRunner().invoke(cli, _compress_args(task, art, "--json"))
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)["results"]
    assert res["heldout"] is None and res["checkpoint"] is None
    checkpoint, decoded = _checkpoint_and_decoded(task, art)
    with np.load(task / "train.npz") as archive:
        train = dict(archive)
    pred = _predict(checkpoint, train["x"])
    differ = int((pred != _predict(decoded, train["x"])).sum())
    errors = int((pred != torch.from_numpy(train["y"])).sum())
    assert res["checkpoint_on_training"]["disagreements_with_decoded"] == differ
    assert res["checkpoint_on_training"]["disagreement_rate"] == differ / 400
    assert res["checkpoint_on_training"]["errors"] == errors
    table = CliRunner().invoke(cli, _compress_args(task, art))
    assert table.exit_code == 0, table.stderr
    text = " ".join(table.stdout.split())
    assert (
        f"decoded ≠ checkpoint │ {differ} of 400 predictions ({differ / 400:.6f}, training" in text
    )
    assert f"errors of the checkpoint │ {errors} ({errors / 400:.6f}, training data)" in text
    assert "bound on the checkpoint itself" not in text


def test_chance_level_is_the_models_number_of_outputs(task: Path, tmp_path: Path) -> None:
    """A 10-output model on two-class data: guessing among its outputs errs 9 times in 10."""
    kwargs = {**ARCH_KWARGS, "num_classes": 10}
    torch.manual_seed(0)
    model = mlp(**kwargs)  # type: ignore[arg-type]
    path = tmp_path / "ten.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    args = _args(task, "quantize", "--levels", "4", "--json", kwargs=kwargs)
    args[1] = str(path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    verdict = json.loads(result.stdout)["results"]["verdict"]
    assert verdict["num_classes"] == 10
    assert verdict["chance_error"] == pytest.approx(0.9)


def test_unlabeled_inputs_bound_the_disagreement(task: Path, tmp_path: Path) -> None:
    with np.load(task / "test.npz") as archive:
        test = dict(archive)
    ux = test["x"][:150] * 1.01
    np.savez(tmp_path / "unlabeled.npz", x=ux)
    art = tmp_path / "m.pbcm"
    extra = ("--artifact", str(art), "--unlabeled", str(tmp_path / "unlabeled.npz"))
    args = _args(task, "quantize", *QUANTIZE, *extra, "--disagreement-delta", "0.005")
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    res = doc["results"]
    assert res["heldout"] is None  # no labels: no test-set bound, but a certificate
    checkpoint, decoded = _checkpoint_and_decoded(task, art)
    k = int((_predict(checkpoint, ux) != _predict(decoded, ux)).sum())
    d = res["checkpoint"]["disagreement"]
    assert (d["source"], d["inputs"], d["disagreements"], d["delta"]) == (
        "unlabeled",
        150,
        k,
        0.005,
    )
    assert d["upper_bound"] == disagreement_bound(k, m=150, delta=0.005).value
    assert res["checkpoint"]["delta_total"] == 0.05 + 0.005
    assert doc["options"]["disagreement_delta"] == 0.005
    assert doc["inputs"]["unlabeled"]["n"] == 150


def test_unlabeled_inputs_of_another_shape_are_refused(task: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((10, 5), dtype=np.float32))
    art = tmp_path / "m.pbcm"
    args = _args(task, "quantize", "--unlabeled", str(tmp_path / "bad.npz"), "--artifact", str(art))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: --unlabeled ")
    assert "each input has shape [5], but the --data inputs have [6]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not art.exists()


def test_report_with_checkpoint_statements_validates(task: Path, tmp_path: Path) -> None:
    from pacbound.report.validate import validation_errors

    args = _args(task, "quantize", *QUANTIZE, "--heldout", str(task / "test.npz"), "--json")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert validation_errors(doc) == []
    doc["results"]["checkpoint"]["bound"] = 1.5
    doc["results"]["checkpoint"]["disagreement"]["source"] = "training"
    doc["results"]["checkpoint_on_training"]["errors"] = -1
    errors = " | ".join(validation_errors(doc))
    for path in (
        "results.checkpoint.bound",
        "results.checkpoint.disagreement.source",
        "results.checkpoint_on_training.errors",
    ):
        assert path in errors

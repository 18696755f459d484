"""`pacbound verify` re-derives the statements about the checkpoint of a compression report
(issue #11): the training comparison, the held-out bound and the checkpoint's certificate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pacbound.cli.main import cli
from pacbound.report.document import results_hash
from tests.report._tiny import ARCH_KWARGS, make_task


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_task(tmp_path_factory.mktemp("statements"))
    with np.load(root / "test.npz") as archive:
        x = archive["x"]
    np.savez(root / "inputs.npz", x=x[::-1].copy() * 1.01)
    args = [
        "certify",
        str(root / "final.safetensors"),
        "--method",
        "quantize",
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(ARCH_KWARGS),
        "--data",
        str(root / "train.npz"),
        "--heldout",
        str(root / "test.npz"),
        "--unlabeled",
        str(root / "inputs.npz"),
        "--levels",
        "4",
        "--artifact",
        str(root / "model.pbz"),
        "--output",
        str(root / "report.json"),
        "--quiet",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return root / "report.json"


def _verify(report: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["verify", str(report), "--json"])
    fields = json.loads(result.stdout)["fields"] if result.stdout.strip() else []
    return result.exit_code, [f["field"] for f in fields if not f["agree"]]


def test_genuine_compression_report_with_statements_verifies(quantized: Path) -> None:
    res = json.loads(quantized.read_text())["results"]
    assert res["checkpoint"]["disagreement"]["source"] == "unlabeled"
    assert res["heldout"] is not None and res["checkpoint_on_training"]["n"] == 400
    assert _verify(quantized) == (0, [])


@pytest.mark.parametrize(
    ("block", "name"),
    [
        ("checkpoint", "bound"),
        ("heldout", "bound"),
        ("checkpoint_on_training", "errors"),
    ],
)
def test_tampered_statement_fails(quantized: Path, tmp_path: Path, block: str, name: str) -> None:
    doc = json.loads(quantized.read_text())
    value = doc["results"][block][name]
    doc["results"][block][name] = value * 0.5 if isinstance(value, float) else value + 1
    doc["results_sha256"] = results_hash(doc["results"])
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    code, disagreeing = _verify(forged)
    assert code == 1 and disagreeing == [f"{block}.{name}"]


def test_statement_without_its_set_fails(quantized: Path, tmp_path: Path) -> None:
    doc = json.loads(quantized.read_text())
    del doc["inputs"]["heldout"]
    forged = tmp_path / "no_set.json"
    forged.write_text(json.dumps(doc))
    code, disagreeing = _verify(forged)
    assert code == 1 and "heldout" in disagreeing

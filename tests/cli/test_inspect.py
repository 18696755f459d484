"""`pacbound inspect` through CliRunner: the table, the JSON report, .pt2 and exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from click.testing import CliRunner, Result

from pacbound.cli.main import cli
from pacbound.models import convnet
from tests.io.conftest import save_safetensors, small_mlp

KW = '{"channels": [4], "hidden": 8, "batch_norm": true}'


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["inspect", *args])


def bn_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_safetensors(
        tmp_path / "bn.safetensors", convnet(channels=[4], hidden=8, batch_norm=True)
    )


def test_json_report(tmp_path: Path) -> None:
    path = bn_checkpoint(tmp_path)
    result = run(str(path), "--arch", "convnet", "--arch-kwargs", KW, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["command"] == "inspect"
    assert doc["loads"] is True and doc["load_error"] is None
    assert doc["architecture"] == "convnet"
    assert doc["checkpoint"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert doc["checkpoint"]["bytes"] == path.stat().st_size
    # conv 4·1·3·3+4, BN 4+4, linear (4·14·14)·8+8, linear 8·10+10
    assert doc["num_parameters"] == 40 + 8 + 6280 + 90
    assert doc["num_buffer_elements"] == 4 + 4 + 1
    assert doc["num_buffer_tensors"] == 3
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["1.running_mean"] == {
        "name": "1.running_mean",
        "kind": "buffer",
        "shape": [4],
        "dtype": "float32",
        "numel": 4,
    }
    assert by_name["1.num_batches_tracked"]["dtype"] == "int64"
    assert by_name["5.weight"]["shape"] == [8, 784]


def test_table_lists_tensors_and_totals(tmp_path: Path) -> None:
    path = bn_checkpoint(tmp_path)
    result = run(str(path), "--arch", "convnet", "--arch-kwargs", KW)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "1.running_var" in out and "buffer" in out
    assert "6,418 in 8 tensors" in out
    assert "9 in 3 tensors" in out
    assert "yes, into convnet" in out
    assert hashlib.sha256(path.read_bytes()).hexdigest()[:16] in out


def test_without_arch_loads_is_not_checked(tmp_path: Path) -> None:
    result = run(str(bn_checkpoint(tmp_path)), "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["loads"] is None and doc["kinds_from"] == "names"


def test_mismatch_prints_report_then_exits_3(tmp_path: Path) -> None:
    result = run(str(bn_checkpoint(tmp_path)), "--arch", "convnet", "--json")
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert doc["loads"] is False
    assert "missing: 3.weight" in doc["load_error"]
    assert result.stderr.startswith("Error: CHECKPOINT ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_exported_program(tmp_path: Path) -> None:
    net = small_mlp().eval()
    program = torch.export.export(
        net, (torch.rand(2, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    path = tmp_path / "net.pt2"
    torch.export.save(program, path)
    doc = json.loads(run(str(path), "--json").stdout)
    assert doc["loads"] is True
    assert doc["checkpoint"]["format"] == "pt2"
    assert doc["num_parameters"] == 16 * 8 + 8 + 8 * 3 + 3


def test_help_documents_builtins_and_kwargs() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for text in ("mlp", "lenet5", "convnet", "hidden=[600]", "batch_norm=false", "--arch-kwargs"):
        assert text in result.stdout
    assert "package.module:factory" in result.stdout
    assert "--unsafe-allow-pickle" in result.stdout

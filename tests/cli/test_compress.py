"""`pacbound compress` on the tiny synthetic task: the artifact, its code length and bound."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pacbound.bounds import bits_to_nats, occam_binomial
from pacbound.cli.main import cli
from tests.report._tiny import ARCH_KWARGS, make_task


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("compress"))


def _args(task: Path, method: str, out: Path, *extra: str) -> list[str]:
    return [
        "compress",
        str(task / "final.safetensors"),
        "--method",
        method,
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(ARCH_KWARGS),
        "--data",
        str(task / "train.npz"),
        "-o",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("quantize", ("--levels", "4,8")),
        ("subspace", ("--d", "20", "--levels", "4", "--subspace-epochs", "3")),
    ],
)
def test_artifact_size_is_the_code_length(
    task: Path, tmp_path: Path, method: str, extra: tuple[str, ...]
) -> None:
    art = tmp_path / "model.pbcm"
    result = CliRunner().invoke(cli, _args(task, method, art, *extra, "--json"))
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    res = doc["results"]
    payload = art.read_bytes()
    assert res["method"] == method
    assert res["code_length_bits"] == 8 * len(payload)
    assert sum(res["code_length_breakdown"].values()) == res["code_length_bits"]
    assert doc["artifact"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert res["compression"]["artifact_sha256"] == doc["artifact"]["sha256"]
    assert doc["artifact"]["bytes"] == len(payload)
    expected = occam_binomial(
        res["errors"] / res["n"], kl=bits_to_nats(res["code_length_bits"]), n=400, delta=0.05
    )
    assert res["bound"] == expected.value


def test_same_pipeline_as_certify(task: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    compressed = runner.invoke(
        cli, _args(task, "quantize", tmp_path / "c.pbcm", "--levels", "4,8", "--json")
    )
    certify = [
        "certify",
        str(task / "final.safetensors"),
        "--method",
        "quantize",
        "--levels",
        "4,8",
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(ARCH_KWARGS),
        "--data",
        str(task / "train.npz"),
        "--artifact",
        str(tmp_path / "a.pbcm"),
        "--json",
        "--quiet",
    ]
    certified = runner.invoke(cli, certify)
    assert compressed.exit_code == 0 and certified.exit_code == 0, certified.stderr
    assert json.loads(compressed.stdout)["results"] == json.loads(certified.stdout)["results"]
    assert (tmp_path / "c.pbcm").read_bytes() == (tmp_path / "a.pbcm").read_bytes()


def test_table_shows_code_length_breakdown_and_bound(task: Path, tmp_path: Path) -> None:
    art = tmp_path / "model.pbcm"
    result = CliRunner().invoke(cli, _args(task, "quantize", art, "--levels", "4"))
    assert result.exit_code == 0, result.stderr
    size = art.stat().st_size
    for text in ("bound on true 0-1 error", "code length", "symbols", "integrity", "decoded"):
        assert text in result.stdout
    assert f"{size} bytes (= {8 * size} bits)" in result.stdout


def test_unwritable_output_fails_before_work(task: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _args(task, "quantize", tmp_path / "no" / "m.pbcm"))
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: --output") and "does not exist" in result.stderr


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (("--method", "gaussian"), "Invalid value for '--method'"),
        (("--artifact", "x.pbcm"), "No such option '--artifact'"),
    ],
)
def test_usage_errors_exit_2(
    task: Path, tmp_path: Path, change: tuple[str, str], pattern: str
) -> None:
    args = _args(task, "quantize", tmp_path / "m.pbcm")
    if change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
    else:
        args += list(change)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert pattern in result.stderr
    assert not (tmp_path / "m.pbcm").exists()


def test_output_is_required(task: Path) -> None:
    args = _args(task, "quantize", Path("unused"))
    i = args.index("-o")
    del args[i : i + 2]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "Missing option '--output'" in result.stderr

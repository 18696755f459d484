"""`pacbound verify ARTIFACT`: decode, re-score, compare with a report; bad artifacts exit 3."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pacbound.cli.main import cli
from tests.report._tiny import ARCH_KWARGS, make_task


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("verify_artifact"))


def _model(*extra: str) -> list[str]:
    return ["--arch", "mlp", "--arch-kwargs", json.dumps(ARCH_KWARGS), *extra]


@pytest.fixture(scope="module")
def certified(task: Path) -> tuple[Path, Path]:
    """A quantize artifact and the certify report that records it."""
    art, report = task / "q.pbcm", task / "q.json"
    args = [
        "certify",
        str(task / "final.safetensors"),
        "--method",
        "quantize",
        "--levels",
        "4,8",
        *_model("--data", str(task / "train.npz")),
        "--artifact",
        str(art),
        "--output",
        str(report),
        "--quiet",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    return art, report


@pytest.fixture(scope="module")
def subspace(task: Path) -> tuple[Path, dict[str, object]]:
    """A subspace artifact written by `compress`, and compress's results."""
    art = task / "s.pbcm"
    args = [
        "compress",
        str(task / "final.safetensors"),
        "--method",
        "subspace",
        "--d",
        "20",
        "--levels",
        "4",
        "--subspace-epochs",
        "3",
        "--seed",
        "3",
        *_model("--data", str(task / "train.npz")),
        "-o",
        str(art),
        "--json",
        "--quiet",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    return art, json.loads(result.stdout)["results"]


def _verify(task: Path, artifact: Path, *extra: str, data: str = "train.npz") -> Result:
    args = ["verify", str(artifact), *_model("--data", str(task / data)), *extra]
    return CliRunner().invoke(cli, args)


def _one_error_line(result: Result, code: int, pattern: str) -> None:
    assert result.exit_code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), lines
    assert pattern in lines[0]
    assert "Traceback" not in result.stderr


def test_artifact_agrees_with_its_report(task: Path, certified: tuple[Path, Path]) -> None:
    art, report = certified
    result = _verify(task, art, "--report", str(report), "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["agree"] is True
    fields = {f["field"]: f for f in doc["fields"]}
    for name in ("inputs.artifact.sha256", "inputs.data", "bound", "code_length_bits", "errors"):
        assert fields[name]["agree"] is True, fields[name]
    assert doc["results"]["code_length_bits"] == 8 * art.stat().st_size


def test_subspace_artifact_is_decoded_with_its_own_seed(
    task: Path, subspace: tuple[Path, dict[str, object]]
) -> None:
    art, compressed = subspace
    result = _verify(task, art, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["report"] is None and "fields" not in doc
    ours = doc["results"]
    assert ours["compression"]["seed"] == 3
    for key in ("bound", "errors", "n", "code_length_bits", "code_length_breakdown"):
        assert ours[key] == compressed[key], key


def test_table_output(task: Path, certified: tuple[Path, Path]) -> None:
    art, report = certified
    result = _verify(task, art, "--report", str(report))
    assert result.exit_code == 0
    assert "bound on true 0-1 error" in result.stdout
    assert "recomputed" in result.stdout and "│ NO" not in result.stdout


@pytest.mark.parametrize(
    ("key", "value"), [("bound", 0.01), ("errors", 1), ("code_length_bits", 8)]
)
def test_tampered_report_number_exits_1(
    task: Path, certified: tuple[Path, Path], tmp_path: Path, key: str, value: object
) -> None:
    art, report = certified
    doc = json.loads(report.read_text())
    doc["results"][key] = value
    tampered = tmp_path / "r.json"
    tampered.write_text(json.dumps(doc))
    result = _verify(task, art, "--report", str(tampered))
    assert result.exit_code == 1
    assert "Verification failed" in result.stderr
    assert key in result.stderr and "results_sha256" in result.stderr


def test_report_gate_is_recomputed_in_artifact_mode(
    task: Path, certified: tuple[Path, Path], tmp_path: Path
) -> None:
    """A report whose gate claims a pass that its own threshold refuses: the gate is
    recomputed from the re-derived bound (exit 1 naming gate.passed); the honest failed gate
    exits 1 too, as certify did."""
    art, report = certified
    doc = json.loads(report.read_text())
    doc["gate"].update(max_bound=0.001, passed=True, reasons=[])
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    result = _verify(task, art, "--report", str(forged), "--json")
    assert result.exit_code == 1
    fields = {f["field"]: f for f in json.loads(result.stdout)["fields"]}
    assert fields["gate.passed"]["agree"] is False
    assert result.stderr.count("\n") == 1 and "gate.passed" in result.stderr
    bound = json.loads(result.stdout)["results"]["bound"]
    doc["gate"].update(passed=False, reasons=[f"the bound {bound!r} is above --max-bound 0.001"])
    forged.write_text(json.dumps(doc))
    result = _verify(task, art, "--report", str(forged), "--json")
    assert result.exit_code == 1, result.stderr
    assert json.loads(result.stdout)["agree"] is True
    assert json.loads(result.stdout)["gate"]["passed"] is False
    assert "Gate failed" in result.stderr


def test_another_artifact_or_other_data_disagree(
    task: Path, certified: tuple[Path, Path], subspace: tuple[Path, dict[str, object]]
) -> None:
    _, report = certified
    other = _verify(task, subspace[0], "--report", str(report))
    assert other.exit_code == 1
    assert "inputs.artifact.sha256" in other.stderr
    data = _verify(task, certified[0], "--report", str(report), data="test.npz")
    assert data.exit_code == 1
    assert "inputs.data" in data.stderr


@pytest.mark.parametrize(
    ("corrupt", "pattern"),
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:3], "neither a pacbound report"),
        (lambda b: b[:20] + bytes([b[20] ^ 0x10]) + b[21:], "corrupted"),
        (lambda b: bytes([b[0] ^ 0x01]) + b[1:], "neither a pacbound report"),
        (lambda b: b + b"\0", "corrupted"),
    ],
    ids=["half", "last-byte", "three-bytes", "flipped-bit", "magic", "trailing"],
)
def test_corrupted_artifact_exits_3(
    task: Path,
    certified: tuple[Path, Path],
    tmp_path: Path,
    corrupt: Callable[[bytes], bytes],
    pattern: str,
) -> None:
    bad = tmp_path / "bad.pbcm"
    bad.write_bytes(corrupt(certified[0].read_bytes()))
    _one_error_line(_verify(task, bad), 3, pattern)


def test_another_architecture_exits_3(task: Path, certified: tuple[Path, Path]) -> None:
    other = json.dumps({**ARCH_KWARGS, "hidden": [5]})
    args = ["verify", str(certified[0]), "--arch", "mlp", "--arch-kwargs", other]
    result = CliRunner().invoke(cli, [*args, "--data", str(task / "train.npz")])
    _one_error_line(result, 3, "another architecture")


@pytest.mark.parametrize(
    ("drop", "flag"), [("--data", "--data"), ("--arch", "--arch"), ("--arch-kwargs", None)]
)
def test_missing_data_or_arch_is_a_usage_error(
    task: Path, certified: tuple[Path, Path], drop: str, flag: str | None
) -> None:
    args = ["verify", str(certified[0]), *_model("--data", str(task / "train.npz"))]
    i = args.index(drop)
    del args[i : i + 2]
    result = CliRunner().invoke(cli, args)
    if flag is None:  # the default architecture kwargs build another model: bad input
        assert result.exit_code == 3
        return
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: verify ARTIFACT needs {flag}")


def test_options_of_the_other_mode_are_refused(task: Path, certified: tuple[Path, Path]) -> None:
    art, report = certified
    runner = CliRunner()
    on_report = runner.invoke(cli, ["verify", str(report), "--data", str(task / "train.npz")])
    assert on_report.exit_code == 2
    assert "--data applies to an ARTIFACT only" in on_report.stderr
    on_artifact = runner.invoke(
        cli, ["verify", str(art), *_model("--data", str(task / "train.npz")), "--root", "."]
    )
    assert on_artifact.exit_code == 2
    assert "--root applies to a REPORT only" in on_artifact.stderr


def test_report_mode_unchanged(task: Path, certified: tuple[Path, Path]) -> None:
    """The report certify wrote (which records the artifact) still verifies on its own."""
    result = CliRunner().invoke(cli, ["verify", str(certified[1]), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["agree"] is True


@pytest.fixture(scope="module")
def subspace_with_init(task: Path) -> tuple[Path, Path]:
    """A subspace artifact around θ₀ = init.safetensors (not the seed's init), its report."""
    art, report = task / "si.pbcm", task / "si.json"
    args = [
        "certify",
        str(task / "final.safetensors"),
        "--method",
        "subspace",
        "--subspace-init",
        "checkpoint",
        "--d",
        "20",
        "--levels",
        "8",
        "--subspace-epochs",
        "1",
        *_model("--init", str(task / "init.safetensors"), "--data", str(task / "train.npz")),
        "--artifact",
        str(art),
        "--output",
        str(report),
        "--quiet",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    return art, report


def test_subspace_theta0_from_init_file_is_recorded_and_verified(
    task: Path, subspace_with_init: tuple[Path, Path]
) -> None:
    from pacbound.io import sha256_file

    art, report_path = subspace_with_init
    report = json.loads(report_path.read_text())
    init = report["inputs"]["init"]
    assert init["sha256"] == sha256_file(task / "init.safetensors")
    assert len(init["theta0_sha256"]) == 64
    ok = _verify(task, art, "--init", str(task / "init.safetensors"), "--report", str(report_path))
    assert ok.exit_code == 0, ok.stderr + ok.stdout
    again = CliRunner().invoke(cli, ["verify", str(report_path), "--root", "/"])
    assert again.exit_code == 0, again.stderr + again.stdout


def test_subspace_artifact_from_init_file_needs_that_file(
    task: Path, subspace_with_init: tuple[Path, Path], tmp_path: Path
) -> None:
    art, _ = subspace_with_init
    missing = _verify(task, art)
    assert missing.exit_code == 3
    assert "another architecture or θ₀" in missing.stderr and "--init" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    # Same architecture, other θ₀: the final weights used as if they were the init file.
    other = _verify(task, art, "--init", str(task / "final.safetensors"))
    assert other.exit_code == 3
    assert "another architecture or θ₀" in other.stderr


def test_seeded_subspace_artifact_refuses_an_init_file(
    task: Path, subspace: tuple[Path, dict[str, object]]
) -> None:
    art, _ = subspace
    result = _verify(task, art, "--init", str(task / "init.safetensors"))
    assert result.exit_code == 3
    assert "another architecture or θ₀" in result.stderr

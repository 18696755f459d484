"""`pacbound verify`: agreement exits 0, a tampered number 1, a changed input file 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pacbound.cli.main import cli
from pacbound.report.document import results_hash
from tests.report._tiny import certify_args, gaussian_report, make_task, quantize_report


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("verify"))


@pytest.fixture(scope="module")
def gauss(task: Path) -> Path:
    return gaussian_report(task, task / "g", "--heldout", str(task / "test.npz"))


def _verify(report: Path, *extra: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["verify", str(report), *extra])
    return result.exit_code, result.stdout, result.stderr


def _fields(stdout: str) -> dict[str, dict[str, object]]:
    return {f["field"]: f for f in json.loads(stdout)["fields"]}


def test_gaussian_agrees(gauss: Path) -> None:
    code, out, err = _verify(gauss, "--json")
    assert code == 0, err
    fields = _fields(out)
    for name in (
        "bound",
        "kl_nats",
        "empirical_risk.estimate",
        "empirical_risk.upper_bound",
        "prior.scale_index",
        "prior.mean (file)",
        "heldout.bound",
        "results_sha256",
    ):
        assert fields[name]["agree"] is True, fields[name]
    res = json.loads(gauss.read_text())["results"]
    assert fields["bound"]["recomputed"] == res["bound"]
    assert fields["empirical_risk.draws"]["recomputed"] == 2 * 400


def test_gaussian_table_output(gauss: Path) -> None:
    code, out, _ = _verify(gauss)
    assert code == 0
    assert "field" in out and "recomputed" in out and "NO" not in out


RETRAINED = "prior.mean (retrained on S_prior, bit for bit)"


@pytest.fixture(scope="module")
def data_prior(task: Path) -> Path:
    return gaussian_report(task, task / "d", "--prior", "data", "--prior-epochs", "2")


def test_data_prior_agrees_and_the_prior_is_retrained(data_prior: Path) -> None:
    code, out, err = _verify(data_prior, "--json")
    assert code == 0, err
    fields = _fields(out)
    assert fields["prior.split.indices_sha256"]["agree"] is True
    assert fields[RETRAINED]["agree"] is True


@pytest.mark.parametrize("shift", [0.05, 1e-6])
def test_data_prior_not_trained_on_s_prior_is_caught(
    data_prior: Path, tmp_path: Path, shift: float
) -> None:
    """A forger moves the saved prior mean (even by 1e-6) and fixes the file's recorded
    sha256: the prior retrained on S_prior no longer matches it, and the KL is recomputed
    against the retrained prior, not the file's."""
    from safetensors.torch import load_file, save_file

    from pacbound.io import sha256_file

    doc = json.loads(data_prior.read_text())
    posterior = Path(doc["inputs"]["posterior"]["path"])
    if not posterior.is_absolute():
        posterior = data_prior.parent / posterior
    tensors = load_file(str(posterior))
    from safetensors import safe_open

    with safe_open(str(posterior), framework="pt") as handle:
        metadata = handle.metadata()
    forged = {k: (v + shift if k.startswith("prior.mu/") else v) for k, v in tensors.items()}
    target = tmp_path / "posterior.safetensors"
    save_file(forged, str(target), metadata=metadata)
    doc["inputs"]["posterior"]["path"] = str(target)
    doc["inputs"]["posterior"]["sha256"] = sha256_file(target)
    edited = tmp_path / "forged.json"
    edited.write_text(json.dumps(doc))
    code, out, err = _verify(edited, "--json", "--root", str(data_prior.parent))
    assert code == 1, err
    fields = _fields(out)
    assert fields[RETRAINED]["agree"] is False
    assert str(fields[RETRAINED]["recomputed"]).startswith("≠ file")
    # The KL is recomputed against the retrained prior: the forged file does not change it.
    assert fields["kl_nats"]["agree"] is True


@pytest.mark.parametrize(
    ("path", "hash_too"),
    [(("results", "bound"), False), (("results", "kl_nats"), True)],
)
def test_tampered_number_exits_1(
    gauss: Path, tmp_path: Path, path: tuple[str, str], hash_too: bool
) -> None:
    doc = json.loads(gauss.read_text())
    doc[path[0]][path[1]] = doc[path[0]][path[1]] * 0.5
    if hash_too:  # a careful forger also fixes the hash: the recomputation still catches it
        doc["results_sha256"] = results_hash(doc["results"])
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    code, out, err = _verify(edited, "--json")
    assert code == 1
    fields = _fields(out)
    assert fields[path[1]]["agree"] is False
    assert fields["results_sha256"]["agree"] is hash_too
    assert "Verification failed" in err and path[1] in err


@pytest.mark.parametrize("which", ["train.npz", "posterior"])
def test_changed_input_exits_3_naming_it(task: Path, tmp_path: Path, which: str) -> None:
    copy = tmp_path / "task"
    shutil.copytree(task, copy, ignore=shutil.ignore_patterns("g", "d", "q"))
    report = gaussian_report(copy, copy / "g")
    target = copy / "g" / "posterior.safetensors" if which == "posterior" else copy / which
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    code, _, err = _verify(report)
    assert code == 3
    assert err.count("\n") == 1 and err.startswith("Error: ")
    assert str(target) in err and "changed since the report was written" in err


def test_missing_posterior_record(gauss: Path, tmp_path: Path) -> None:
    doc = json.loads(gauss.read_text())
    del doc["inputs"]["posterior"]
    edited = tmp_path / "r.json"
    edited.write_text(json.dumps(doc))
    code, _, err = _verify(edited)
    assert code == 3 and "--save-posterior" in err


def test_quantize_artifact_agrees_and_detects_tampering(task: Path, tmp_path: Path) -> None:
    report = quantize_report(task, tmp_path / "q")
    code, out, err = _verify(report, "--json")
    assert code == 0, err
    assert _fields(out)["errors"]["agree"] is True
    doc = json.loads(report.read_text())
    doc["results"]["errors"] = doc["results"]["errors"] + 1
    report.write_text(json.dumps(doc))
    code, out, _ = _verify(report, "--json")
    assert code == 1 and _fields(out)["errors"]["agree"] is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        (None, "is truncated"),
        ('{"schema_version": 1, "command": "certify"}', "argv: missing"),
        ('{"schema_version": 2, "results": {}}', "newer than the 1 this pacbound reads"),
        ('{"command": "certify"}', "has no schema_version"),
    ],
)
def test_bad_reports_exit_3(gauss: Path, tmp_path: Path, content: str | None, message: str) -> None:
    bad = tmp_path / "bad.json"
    text = gauss.read_text()
    bad.write_text(text[: len(text) // 2] if content is None else content)
    code, out, err = _verify(bad)
    assert code == 3
    assert err.count("\n") == 1 and err.startswith("Error: ") and message in err
    assert "Traceback" not in err and out == ""


def test_missing_report_file(tmp_path: Path) -> None:
    code, _, err = _verify(tmp_path / "nope.json")
    assert code == 3 and "does not exist" in err


class TrustedMeta:
    """A non-tensor object that only full unpickling rebuilds (harmless)."""

    def __init__(self, value: int) -> None:
        self.value = value


def test_pickled_checkpoint_needs_the_unsafe_flag_again(task: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(str(task / "final.safetensors"))
    pickled = tmp_path / "final_full.pt"
    torch.save({"state_dict": state, "meta": TrustedMeta(1)}, pickled)
    args = certify_args(task, tmp_path, "--unsafe-allow-pickle")
    args[1] = str(pickled)
    made = CliRunner().invoke(cli, args)
    assert made.exit_code == 0, made.stderr
    report = tmp_path / "report.json"
    code, _, err = _verify(report)
    assert code == 3
    assert err.startswith("Error:") and "--unsafe-allow-pickle" in err
    code, out, err = _verify(report, "--unsafe-allow-pickle", "--json")
    assert code == 0, err
    assert "Warning:" in err and "arbitrary code" in err
    assert all(f["agree"] for f in json.loads(out)["fields"])


def test_report_whose_init_is_the_trained_checkpoint_is_refused(
    task: Path, gauss: Path, tmp_path: Path
) -> None:
    """verify applies certify's rule: an init prior at the trained weights is invalid."""
    from pacbound.io import sha256_file

    doc = json.loads(gauss.read_text())
    final = task / "final.safetensors"
    doc["inputs"]["init"] = {"path": str(final), "sha256": sha256_file(final)}
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    code, _, err = _verify(edited, "--root", str(gauss.parent))
    assert code == 3
    assert err.strip().startswith("Error: --init holds exactly the checkpoint's trained weights")

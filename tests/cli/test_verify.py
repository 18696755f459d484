"""`pacbound verify`: agreement exits 0, a tampered number 1, a changed input file 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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
        "prior.mean",
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


@pytest.fixture(scope="module")
def data_prior(task: Path) -> Path:
    return gaussian_report(task, task / "d", "--prior", "data", "--prior-epochs", "2")


def test_data_prior_agrees_and_the_prior_is_retrained(data_prior: Path) -> None:
    code, out, err = _verify(data_prior, "--json")
    assert code == 0, err
    fields = _fields(out)
    for name in ("prior.split.indices_sha256", "prior.split.n_prior", "prior.split.n_bound"):
        assert fields[name]["agree"] is True, fields[name]


def test_forged_split_sizes_exit_1(data_prior: Path, tmp_path: Path) -> None:
    """n_prior/n_bound are re-derived from the recorded prior_fraction and seed too."""
    doc = json.loads(data_prior.read_text())
    split = doc["results"]["prior"]["split"]
    split["n_prior"], split["n_bound"] = split["n_prior"] - 100, split["n_bound"] + 100
    doc["results_sha256"] = results_hash(doc["results"])
    code, out, err = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    fields = _fields(out)
    assert code == 1 and fields["prior.split.n_prior"]["agree"] is False
    assert fields["prior.split.n_bound"]["agree"] is False
    assert err.count("\n") == 1 and "prior.split.n_prior" in err


@pytest.mark.parametrize("shift", [0.05, 1e-6])
def test_data_prior_not_trained_on_s_prior_is_caught(
    data_prior: Path, tmp_path: Path, shift: float
) -> None:
    """A forger moves the saved prior mean (even by 1e-6) and fixes the file's recorded
    sha256: the prior retrained on S_prior no longer matches it (the KL would be recomputed
    against the retrained prior, not the file's): bad input, naming the prior mean."""
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
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "prior mean" in err and "re-derive" in err


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
        ('{"schema_version": 2, "command": "certify"}', "argv: missing"),
        ('{"schema_version": 3, "results": {}}', "newer than the 2 this pacbound reads"),
        ('{"schema_version": 1, "results": {}}', "older pacbound (report schema v1"),
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


# --- issue #11: verify re-derives, it does not trust ----------------------------------------


def _save(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _reforge(doc: dict[str, Any]) -> dict[str, Any]:
    """What a careful forger does after editing δ parts, the KL or σ_p: recompute every
    number that follows (the library's own formulas) and fix ``results_sha256``."""
    from pacbound.bounds import (
        mc_upper_per_example,
        pac_bayes_catoni_grid,
        pac_bayes_classic,
        pac_bayes_kl,
        pac_bayes_quad,
    )
    from pacbound.bounds.budget import DeltaPart
    from pacbound.certify.common import Verdict

    res = doc["results"]
    parts = {p["name"]: p for p in res["delta_budget"]["parts"]}
    for p in parts.values():  # the library's own share (δ/G rounded down)
        p["per_choice"] = DeltaPart(p["name"], p["delta"], p["grid_size"]).per_choice
    emp = res["empirical_risk"]
    mc = mc_upper_per_example(
        emp["estimate"], n=res["n"], passes=emp["mc_passes"], delta=parts["monte-carlo"]["delta"]
    )
    kl, n, delta = res["kl_nats"], res["n"], parts["pac-bayes"]["per_choice"]
    cert = pac_bayes_kl(mc.value, kl=kl, n=n, delta=delta)
    emp["upper_bound"] = mc.value
    res["bound"] = cert.value
    res["certificate_terms"] = cert.to_dict()
    info = {
        "classic": pac_bayes_classic,
        "quad": pac_bayes_quad,
        "catoni_grid": pac_bayes_catoni_grid,
    }
    res["information_only"] = {
        k: f(mc.value, kl=kl, n=n, delta=delta).to_dict() for k, f in info.items()
    }
    res["verdict"] = Verdict(cert.value, 2).to_dict()
    doc["results_sha256"] = results_hash(res)
    return doc


def test_reforging_a_genuine_report_changes_nothing(gauss: Path) -> None:
    """The forger's recomputation is exact: the forgeries below differ only where edited."""
    doc = json.loads(gauss.read_text())
    assert _reforge(json.loads(gauss.read_text())) == doc


def test_gaussian_agrees_on_budget_and_grid(gauss: Path) -> None:
    code, out, err = _verify(gauss, "--json")
    assert code == 0, err
    fields = _fields(out)
    grid_size = "delta_budget.parts[0].grid_size"
    for name in (grid_size, "delta_budget.total", "prior.grid.values_sha256", "gate.passed"):
        assert fields[name]["agree"] is True, fields[name]
    assert fields[grid_size]["recomputed"] == 61


@pytest.mark.parametrize(
    "forgery",
    ["grid_size_1", "mc_share"],
)
def test_forged_delta_budget_exits_1(gauss: Path, tmp_path: Path, forgery: str) -> None:
    """A grid of 61 σ_p values reported as paid with grid_size 1 (or δ split otherwise than
    the recorded --mc-delta), every dependent number recomputed and the hash fixed: the
    budget is re-derived from the recorded options, not read from the report."""
    doc = json.loads(gauss.read_text())
    parts = doc["results"]["delta_budget"]["parts"]
    if forgery == "grid_size_1":
        parts[0]["grid_size"] = 1
    else:
        parts[0]["delta"], parts[1]["delta"] = 0.0499, 0.0001
    forged = _save(_reforge(doc), tmp_path / "forged.json")
    code, out, err = _verify(forged, "--json")
    assert code == 1
    fields = _fields(out)
    assert fields["results_sha256"]["agree"] is True
    edited = "grid_size" if forgery == "grid_size_1" else "delta"
    assert fields[f"delta_budget.parts[0].{edited}"]["agree"] is False
    assert fields["bound"]["agree"] is False
    assert err.count("\n") == 1 and "delta_budget.parts[0]" in err and "bound" in err


def _forge_posterior_scale(doc: dict[str, Any], root: Path, target: Path, scale: float) -> None:
    """Rewrite the saved posterior with another σ_p and record its new sha256."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from pacbound.io import sha256_file

    source = Path(doc["inputs"]["posterior"]["path"])
    source = source if source.is_absolute() else root / source
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    metadata["prior_scale"] = repr(scale)
    save_file(load_file(str(source)), str(target), metadata=metadata)
    doc["inputs"]["posterior"]["path"] = str(target)
    doc["inputs"]["posterior"]["sha256"] = sha256_file(target)


LIST_GRID = "0.01,0.02,0.05,0.1,0.2,0.3,0.5,1"


@pytest.fixture(scope="module")
def listed(task: Path) -> Path:
    return gaussian_report(task, task / "l", "--prior-scales", LIST_GRID)


def test_explicit_scale_list_is_reproduced_exactly(listed: Path) -> None:
    doc = json.loads(listed.read_text())
    grid = doc["results"]["prior"]["grid"]
    assert grid["kind"] == "list" and grid["values"] == [float(v) for v in LIST_GRID.split(",")]
    assert doc["results"]["delta_budget"]["parts"][0]["grid_size"] == 8
    code, out, err = _verify(listed, "--json")
    assert code == 0, err
    fields = _fields(out)
    for name in (
        "prior.scale_index",
        "prior.scale",
        "prior.grid.values_sha256",
        "prior.grid.values[7]",
        "delta_budget.parts[0].grid_size",
    ):
        assert fields[name]["agree"] is True, fields[name]
    assert fields["prior.scale"]["recomputed"] in grid["values"]


@pytest.mark.parametrize("which", ["listed", "gauss"])
def test_sigma_p_off_the_grid_exits_1(
    request: pytest.FixtureRequest, tmp_path: Path, which: str
) -> None:
    """σ_p moved off the recorded grid, in the report and in the posterior file (re-hashed),
    KL and bound recomputed, hash fixed: σ_p must be the grid's KL-minimising value (the
    file's σ_p is not: bad input, naming it)."""
    from pacbound.posterior.io import load_posterior

    report: Path = request.getfixturevalue(which)
    doc = json.loads(report.read_text())
    scale = doc["results"]["prior"]["scale"] * 1.07
    target = tmp_path / "posterior.safetensors"
    _forge_posterior_scale(doc, report.parent, target, scale)
    doc["results"]["prior"]["scale"] = scale
    doc["results"]["kl_nats"] = load_posterior(target).kl()
    forged = _save(_reforge(doc), tmp_path / "forged.json")
    code, out, err = _verify(forged, "--json")
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "prior scale" in err and repr(scale) in err


def test_forged_grid_record_exits_1(listed: Path, tmp_path: Path) -> None:
    """The reported grid must be the one the options record (values and hash)."""
    doc = json.loads(listed.read_text())
    doc["results"]["prior"]["grid"]["size"] = 1
    doc["results_sha256"] = results_hash(doc["results"])
    code, out, err = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    assert code == 1 and _fields(out)["prior.grid.size"]["agree"] is False
    assert "prior.grid.size" in err


def test_heldout_bound_with_a_forged_delta_exits_1(gauss: Path, tmp_path: Path) -> None:
    """The held-out δ comes from the recorded options (--heldout-delta), not from the
    statement itself: a looser δ with its (smaller) bound recomputed is caught."""
    from pacbound.bounds import test_set_bound

    doc = json.loads(gauss.read_text())
    held = doc["results"]["heldout"]
    forged_bound = test_set_bound(held["errors"] / held["n"], n=held["n"], delta=0.5)
    held["delta"], held["bound"] = 0.5, forged_bound.value
    doc["results_sha256"] = results_hash(doc["results"])
    code, out, err = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    assert code == 1
    fields = _fields(out)
    assert fields["heldout.delta"]["agree"] is False
    assert fields["heldout.bound"]["agree"] is False
    assert fields["heldout.errors"]["agree"] is True
    assert err.count("\n") == 1 and "heldout.bound" in err


def test_heldout_numbers_without_their_set_exit_1(gauss: Path, tmp_path: Path) -> None:
    doc = json.loads(gauss.read_text())
    del doc["inputs"]["heldout"]
    code, out, err = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    assert code == 1
    fields = _fields(out)
    assert fields["heldout"] == {
        "field": "heldout",
        "reported": "(absent)",
        "recomputed": None,
        "agree": False,
    }
    assert fields["heldout.bound"]["agree"] is False
    assert fields["bound"]["agree"] is True  # the certificate itself does not need the set
    assert err.count("\n") == 1 and "heldout.certified_classifier" in err


def test_recorded_heldout_set_without_its_statement_exits_1(gauss: Path, tmp_path: Path) -> None:
    doc = json.loads(gauss.read_text())
    doc["results"]["heldout"] = None
    doc["results_sha256"] = results_hash(doc["results"])
    code, out, _ = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    fields = _fields(out)
    assert code == 1 and fields["heldout"]["agree"] is False
    assert fields["heldout.bound"]["reported"] == "(absent)"


@pytest.mark.parametrize(
    ("change", "message"),
    [("flip", "changed since the report was written"), ("delete", "does not exist")],
)
def test_changed_or_missing_heldout_set_exits_3(
    task: Path, tmp_path: Path, change: str, message: str
) -> None:
    copy = tmp_path / "task"
    shutil.copytree(task, copy, ignore=shutil.ignore_patterns("g", "d", "q", "l", "m"))
    report = gaussian_report(copy, copy / "g", "--heldout", str(copy / "test.npz"))
    target = copy / "test.npz"
    if change == "delete":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[-1] ^= 0x01
        target.write_bytes(bytes(data))
    code, _, err = _verify(report)
    assert code == 3
    assert err.count("\n") == 1 and err.startswith("Error: ")
    assert "heldout file" in err and str(target) in err and message in err


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"non_vacuous": False}, "verdict.non_vacuous"),
        ({"chance_error": 0.9}, "verdict.chance_error"),
    ],
)
def test_forged_verdict_exits_1(
    gauss: Path, tmp_path: Path, edit: dict[str, object], field: str
) -> None:
    doc = json.loads(gauss.read_text())
    doc["results"]["verdict"].update(edit)
    doc["results_sha256"] = results_hash(doc["results"])
    code, out, err = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    assert code == 1 and _fields(out)[field]["agree"] is False and field in err


def _certify_from_the_command_line(args: list[str], exit_code: int = 0) -> None:
    """Run certify as `pacbound certify ...` would: the report records this argv."""
    import sys

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["pacbound", *args])
        made = CliRunner().invoke(cli, args)
    assert made.exit_code == exit_code, made.output


@pytest.fixture(scope="module")
def gated(task: Path) -> Path:
    """A genuine report whose gate failed: --max-bound 0.01 under a bound of ≈ 0.12."""
    out = task / "m"
    out.mkdir()
    _certify_from_the_command_line(certify_args(task, out, "--max-bound", "0.01"), 1)
    return out / "report.json"


@pytest.fixture(scope="module")
def recorded(task: Path) -> Path:
    """A genuine report that records its `pacbound certify` command line."""
    out = task / "a"
    out.mkdir()
    _certify_from_the_command_line(certify_args(task, out, "--max-bound", "0.5"))
    return out / "report.json"


def test_options_agree_with_the_recorded_command_line(recorded: Path) -> None:
    doc = json.loads(recorded.read_text())
    assert doc["argv"][:2] == ["pacbound", "certify"]
    code, out, err = _verify(recorded, "--json")
    assert code == 0, err
    fields = _fields(out)
    for name in (
        "options.prior_scales (argv)",
        "options.mc_delta (argv)",
        "options.disagreement_delta (argv)",
        "gate.max_bound (argv)",
    ):
        assert fields[name]["agree"] is True, fields[name]


def test_compression_options_agree_with_the_recorded_command_line(
    task: Path, tmp_path: Path
) -> None:
    """A quantize report from the command line: its statements' δs must be what the line
    gives, even when no statement uses them (no held-out set here)."""
    args = certify_args(task, tmp_path)
    model_and_data = [*args[1 : args.index("--init")], "--data", str(task / "train.npz")]
    _certify_from_the_command_line(
        [
            "certify",
            *model_and_data,
            "--method",
            "quantize",
            "--levels",
            "4,8",
            "--artifact",
            str(tmp_path / "q.pbcm"),
            "--output",
            str(tmp_path / "report.json"),
            "--quiet",
        ]
    )
    report = tmp_path / "report.json"
    code, out, err = _verify(report, "--json")
    assert code == 0, err
    assert _fields(out)["options.disagreement_delta (argv)"]["agree"] is True
    doc = json.loads(report.read_text())
    doc["options"]["disagreement_delta"] = 0.04
    code, out, err = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    assert code == 1 and "options.disagreement_delta (argv)" in err


def test_grid_shrunk_to_the_chosen_scale_exits_1(recorded: Path, tmp_path: Path) -> None:
    """A forger replaces the 61-value grid by the chosen σ_p alone in options and results and
    makes every number consistent with it (δ_PB no longer split 61 ways): only the recorded
    command line still says --prior-scales 1e-3:1:61, and verify parses it."""
    from pacbound.posterior.priors import ScaleGrid

    doc = json.loads(recorded.read_text())
    one = ScaleGrid((doc["results"]["prior"]["scale"],)).to_dict()
    doc["options"]["prior_scales"] = one
    doc["results"]["prior"]["grid"] = one
    doc["results"]["prior"]["scale_index"] = 0
    doc["results"]["delta_budget"]["parts"][0]["grid_size"] = 1
    code, out, err = _verify(_save(_reforge(doc), tmp_path / "forged.json"), "--json")
    assert code == 1
    disagree = [f["field"] for f in json.loads(out)["fields"] if not f["agree"]]
    assert disagree == ["options.prior_scales (argv)"]
    assert err.count("\n") == 1 and "options.prior_scales (argv)" in err


def test_gate_is_recorded_and_recomputed(gated: Path) -> None:
    doc = json.loads(gated.read_text())
    assert doc["gate"]["passed"] is False and doc["gate"]["max_bound"] == 0.01
    assert doc["gate"]["fail_if_vacuous"] is False
    code, out, err = _verify(gated, "--json")
    assert code == 1  # every field agrees, and the certificate fails its recorded gate
    assert all(f["agree"] for f in json.loads(out)["fields"])
    assert json.loads(out)["gate"]["passed"] is False
    assert "Verification failed" not in err and "Gate failed" in err and "0.01" in err


def test_gate_forged_as_passed_exits_1(gated: Path, tmp_path: Path) -> None:
    doc = json.loads(gated.read_text())
    doc["gate"]["passed"], doc["gate"]["reasons"] = True, []
    code, out, err = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    assert code == 1
    assert _fields(out)["gate.passed"]["agree"] is False
    assert err.startswith("Verification failed") and "gate.passed" in err


def test_gate_threshold_removed_exits_1(gated: Path, tmp_path: Path) -> None:
    """Threshold dropped from the gate block, gate marked passed: the recorded command line
    still says --max-bound 0.01."""
    doc = json.loads(gated.read_text())
    doc["gate"].update(passed=True, reasons=[], max_bound=None)
    code, out, err = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    assert code == 1
    disagree = [f["field"] for f in json.loads(out)["fields"] if not f["agree"]]
    assert disagree == ["gate.max_bound (argv)"]
    assert "gate.max_bound (argv)" in err


def test_gate_exit_zero_is_honoured(gated: Path, tmp_path: Path) -> None:
    doc = json.loads(gated.read_text())
    doc["gate"]["exit_zero"] = True
    doc["argv"].append("--exit-zero")
    code, _, err = _verify(_save(doc, tmp_path / "r.json"))
    assert code == 0 and "Gate failed" in err


def test_gate_thresholds_of_older_reports_come_from_argv() -> None:
    from pacbound.cli.gate import recheck_gate

    old = {"passed": True, "reasons": [], "exit_zero": False}
    argv = ["pacbound", "certify", "m.pt", "--max-bound=0.05", "--fail-if-vacuous"]
    gate, checks = recheck_gate(old, argv, 0.2, 0.5)
    assert gate.passed is False and gate.max_bound == 0.05 and gate.fail_if_vacuous
    assert [c.agree for c in checks] == [False, False]
    gate, checks = recheck_gate(old, ["pacbound", "certify"], 0.2, 0.5)
    assert gate.passed is True and all(c.agree for c in checks)


def test_root_puts_a_user_architecture_on_the_import_path(
    task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report made with --arch usernet_verify:net (a module next to it) verifies from
    elsewhere with --root, and sys.path is restored afterwards."""
    import sys

    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "usernet_verify.py").write_text(
        "from pacbound.models import mlp\n\ndef net(**kw):\n    return mlp(**kw)\n"
    )
    monkeypatch.chdir(folder)
    args = certify_args(task, folder)
    args[args.index("--arch") + 1] = "usernet_verify:net"
    made = CliRunner().invoke(cli, args)
    assert made.exit_code == 0, made.output
    monkeypatch.delitem(sys.modules, "usernet_verify")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    code, _, err = _verify(folder / "report.json", "--root", str(folder))
    assert code == 0, err
    assert sys.path == before
    monkeypatch.delitem(sys.modules, "usernet_verify")
    code, _, err = _verify(folder / "report.json")
    assert code == 3 and err.startswith("Error:") and "usernet_verify" in err


def test_failure_summary_stays_one_short_line(capsys: pytest.CaptureFixture[str]) -> None:
    from pacbound.cli.verify_cmd import NAMED_FIELDS, _explain
    from pacbound.verify.fields import FieldCheck, Verification

    checks = tuple(FieldCheck(f"information_only.field_{i:02d}", 1, 2) for i in range(40))
    _explain(Verification("gaussian", checks))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400
    assert err.startswith("Verification failed: 40 field(s) disagree: information_only.field_00")
    assert err.rstrip().endswith(f"and {40 - NAMED_FIELDS} more")


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["gate"].__setitem__("exit_zero", True), "gate.exit_zero (argv)"),
        (lambda d: d["argv"].extend(["--prior-scales", "a:b"]), "argv"),
        (lambda d: d["argv"].extend(["--delta", "0.1"]), "options.delta (argv)"),
    ],
)
def test_report_at_odds_with_its_command_line_exits_1(
    gated: Path, tmp_path: Path, edit: Any, field: str
) -> None:
    doc = json.loads(gated.read_text())
    edit(doc)
    code, out, err = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    assert code == 1 and _fields(out)[field]["agree"] is False
    assert err.count("\n") == 1 and err.startswith("Verification failed") and field in err


@pytest.mark.parametrize(
    ("argv", "disagree"),
    [
        (["pacbound", "--debug", "certify", "m.pt", "--method", "quantize"], []),
        (
            ["pacbound", "--debug", "certify", "m.pt", "--method", "quantize", "--delta", "0.1"],
            ["options.delta (argv)", "options.heldout_delta (argv)"],
        ),
        (["python", "train.py", "--delta", "0.1"], None),
    ],
)
def test_argv_checks_only_for_a_certify_command_line(
    argv: list[str], disagree: list[str] | None
) -> None:
    from pacbound.cli.verify_argv import argv_checks

    document = {
        "argv": argv,
        "options": {"method": "quantize", "delta": 0.05, "seed": 0, "heldout_delta": 0.05},
        "gate": {"passed": True, "reasons": [], "exit_zero": False},
    }
    checks = argv_checks(document)
    if disagree is None:
        assert checks == []
    else:
        assert [c.field for c in checks if not c.agree] == disagree
        assert "options.method (argv)" in [c.field for c in checks]


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (("results",), "certified_classifier"),
        (("results", "heldout"), "heldout.certified_classifier"),
    ],
)
def test_a_certificate_relabelled_as_about_another_classifier_exits_1(
    gauss: Path, tmp_path: Path, where: tuple[str, ...], field: str
) -> None:
    """The words saying which classifier a bound is about are re-derived too: a Gaussian
    certificate (about the stochastic Q) relabelled as one on the checkpoint fails."""
    doc = json.loads(gauss.read_text())
    block = doc
    for key in where:
        block = block[key]
    block["certified_classifier"] = "the checkpoint's own weights (deterministic)"
    doc["results_sha256"] = results_hash(doc["results"])
    code, out, err = _verify(_save(doc, tmp_path / "forged.json"), "--json")
    assert code == 1 and _fields(out)[field]["agree"] is False
    assert err.count("\n") == 1 and field in err

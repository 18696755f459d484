"""``certify --method marginal``: the prior is fixed before S is seen (issue 15).

C comes from ``--num-classes``, a ``--label-map``'s targets or a Monte-Carlo kernel's
``--arch`` output width, never from the labels of ``--data``; it is recorded in the report's
options, and verify recomputes with it. ``--jitter`` takes a grid paid by the union bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pacbound.cli.main import cli
from pacbound.report.document import results_hash

BASE = ("certify", "--method", "marginal", "--kernel-depth", "1", "--is-samples", "60")


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("marginal_prior")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 3))
    np.savez(root / "d.npz", x=x, y=np.array([0, 1, 1, 0, 1, 0, 0, 1]))
    np.savez(root / "test.npz", x=rng.normal(size=(4, 3)), y=np.array([0, 1, 3, 1]))
    # x₁ and x₂ differ by 1e-13: only the white noise separates them
    near = np.array([[1.0, 0.0], [1.0, 1e-13], [0.0, 1.0]])
    np.savez(root / "near.npz", x=near, y=np.array([0, 1, 1]))
    return root


def test_c_is_recorded_and_verify_recomputes_with_it(root: Path, tmp_path: Path) -> None:
    code, _, err = _run(
        *BASE, "--data", str(root / "d.npz"), "--num-classes", "3", "--quiet",
        "--output", str(tmp_path / "r.json"), "--save-kernel", str(tmp_path / "k.json"),
    )  # fmt: skip
    assert code == 0, err
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["options"]["num_classes"] == 3
    labels = document["results"]["labels"]
    assert labels["classes"] == 3 and labels["constraints"] == 16 and labels["counts"] == [4, 4, 0]
    assert document["results"]["verdict"]["num_classes"] == 3
    code, _, err = _run("verify", str(tmp_path / "r.json"))
    assert code == 0, err
    # a report written before C was recorded: refused with the reason, not recomputed
    del document["options"]["num_classes"]
    (tmp_path / "old.json").write_text(json.dumps(document))
    code, _, err = _run("verify", str(tmp_path / "old.json"))
    assert code == 3 and "record no num_classes" in err and "--num-classes" in err, err
    document["options"]["num_classes"] = 2  # another C: another prior
    document["results_sha256"] = results_hash(document["results"])
    (tmp_path / "two.json").write_text(json.dumps(document))
    code, _, err = _run("verify", str(tmp_path / "two.json"))
    assert code == 1 and "verdict.num_classes" in err and "labels.classes" not in err, err


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        ((), 3, "give --num-classes C"),
        (("--num-classes", "1"), 3, "--num-classes must be at least 2"),
        (("--num-classes", "3", "--label-map", "0:0,1:1"), 3, "--label-map maps to 2 classes"),
        (("--label-map", "0-1:0"), 3, "maps to one class only"),
        (("--num-classes", "2", "--heldout", "{root}/test.npz"), 3, "--heldout"),
    ],
)
def test_c_not_fixed_in_advance_or_exceeded_is_refused(
    root: Path, extra: tuple[str, ...], code: int, message: str
) -> None:
    args = [e.replace("{root}", str(root)) for e in extra]
    got, out, err = _run(*BASE, "--data", str(root / "d.npz"), "--quiet", *args)
    assert got == code and message in err and out == "", err
    assert err.count("\n") == 1
    if "--heldout" in args:
        assert "test.npz holds the label 3, outside 0..1" in err


def test_num_classes_applies_to_the_marginal_method_only(root: Path) -> None:
    code, _, err = _run("certify", "--data", str(root / "d.npz"), "--num-classes", "3")
    assert code == 2 and "--num-classes applies only with --method marginal" in err, err


def test_monte_carlo_c_is_the_architecture_output_width(root: Path) -> None:
    """An MLP with 3 outputs: C = 3 although S holds two classes; recorded in the options."""
    arch = {"in_features": 3, "hidden": [8], "num_classes": 3}
    code, out, err = _run(
        "certify", "--method", "marginal", "--data", str(root / "d.npz"), "--kernel",
        "monte-carlo", "--arch", "mlp", "--arch-kwargs", json.dumps(arch), "--kernel-draws",
        "30", "--jitter", "1e-2", "--is-samples", "60", "--json",
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    assert document["options"]["num_classes"] == 3
    assert document["results"]["labels"]["classes"] == 3
    assert document["results"]["kernel"]["extra"]["readout"] == "class-average"


def test_a_jitter_grid_through_the_cli_and_verify(root: Path, tmp_path: Path) -> None:
    code, _, err = _run(
        *BASE, "--data", str(root / "near.npz"), "--num-classes", "2", "--jitter",
        "1e-300,1e-6", "--quiet", "--output", str(tmp_path / "r.json"), "--save-kernel",
        str(tmp_path / "k.json"),
    )  # fmt: skip
    assert code == 0, err
    document = json.loads((tmp_path / "r.json").read_text())
    res = document["results"]
    assert document["options"]["jitter"] == [1e-300, 1e-6]
    assert res["kernel"]["jitter"] == 1e-6 and res["kernel"]["grid_size"] == 2
    assert [p.get("failed") is not None for p in res["search"]] == [True, False]
    assert all(p["grid_size"] == 2 for p in res["delta_budget"]["parts"])
    code, _, err = _run("verify", str(tmp_path / "r.json"))
    assert code == 0, err
    # every point failing: exit 4, one line, no value derived from S
    code, _, err = _run(
        *BASE, "--data", str(root / "near.npz"), "--num-classes", "2", "--jitter",
        "1e-300,1e-299", "--quiet",
    )  # fmt: skip
    assert code == 4 and err.count("\n") == 1 and "every grid point" in err, err
    code, _, err = _run(*BASE, "--data", str(root / "near.npz"), "--jitter", "1e-6,1e-6")
    assert code == 3 and "--jitter lists a value twice" in err, err

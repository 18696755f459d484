"""``--label-map``: one relabelling of --data and --heldout for every method, recorded in the
report and re-applied by ``verify``.

Binary MNIST (0–4 vs 5–9) at tiny n: a Gaussian certificate of a small MLP trained on the
mapped labels, the report's records, verify agreeing, and a report whose label map was
edited refused. Bad maps (overlapping ranges, unmapped labels, bad syntax) exit 3 naming the
option.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pacbound.cli.main import cli
from pacbound.io import load_dataset, parse_label_map
from pacbound.models import mlp

MNIST = Path(__file__).resolve().parents[2] / "examples" / "data" / "mnist"
BINARY = "0-4:0,5-9:1"
ARCH_KWARGS = {"in_features": 784, "hidden": [16], "num_classes": 2}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 training and 200 test MNIST images (digits 0–9) as .npz, and an MLP trained on
    the binary task (0–4 vs 5–9) with its initial weights."""
    root = tmp_path_factory.mktemp("label_map")
    train = load_dataset(MNIST, subset=300)
    test = load_dataset(MNIST, split="test", subset=200)
    np.savez(root / "train.npz", x=train.x.numpy(), y=train.y.numpy())
    np.savez(root / "test.npz", x=test.x.numpy(), y=test.y.numpy())
    torch.manual_seed(0)
    model = mlp(**ARCH_KWARGS)  # type: ignore[arg-type]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "init.safetensors")
    x, y = train.x.reshape(300, -1), (train.y >= 5).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        root / "final.safetensors",
    )
    return root


def _gaussian(task: Path, *extra: str) -> list[str]:
    return [
        "certify",
        str(task / "final.safetensors"),
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(ARCH_KWARGS),
        "--init",
        str(task / "init.safetensors"),
        "--data",
        str(task / "train.npz"),
        "--heldout",
        str(task / "test.npz"),
        "--prior-scales",
        "1e-3:1:7",
        "--mc-passes",
        "1",
        "--quiet",
        *extra,
    ]


def test_parsed_map_relabels_ranges_inclusively() -> None:
    m = parse_label_map(BINARY)
    labels = torch.arange(10)
    assert m.apply(labels, source="--data").tolist() == [0] * 5 + [1] * 5
    assert m.num_classes == 2
    assert parse_label_map("3:0, 8:1").pairs == ((3, 0), (8, 1))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0-4:0,4-9:1", r"label 4 is mapped twice"),
        ("0-3:0,5-9:1", r"does not cover label\(s\) 4 found in --data"),
        ("0..4->0", r"cannot read '0\.\.4->0'"),
        ("9-5:1", r"runs backwards"),
    ],
)
def test_bad_maps_exit_3_naming_the_option(task: Path, text: str, message: str) -> None:
    result = CliRunner().invoke(cli, _gaussian(task, "--label-map", text))
    assert result.exit_code == 3, result.output
    assert "--label-map" in result.stderr
    assert result.stderr.count("\n") == 1
    import re

    assert re.search(message, result.stderr), result.stderr


def test_gaussian_on_binary_mnist_records_the_map_and_verify_reapplies_it(
    task: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    args = _gaussian(
        task,
        "--label-map",
        BINARY,
        "--output",
        str(report),
        "--save-posterior",
        str(tmp_path / "posterior.safetensors"),
    )
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    for key in ("data", "heldout"):
        assert document["inputs"][key]["label_map"] == BINARY
        assert document["inputs"][key]["num_classes"] == 2
    res = document["results"]
    assert res["verdict"]["num_classes"] == 2 and res["verdict"]["chance_error"] == 0.5
    # the held-out bound counts errors against the mapped labels: recount them here
    test = load_dataset(task / "test.npz", label_map=BINARY)
    model = mlp(**ARCH_KWARGS)  # type: ignore[arg-type]
    from safetensors.torch import load_file

    model.load_state_dict(load_file(task / "final.safetensors"))
    with torch.no_grad():
        errors = int((model(test.x).argmax(1) != test.y).sum())
    assert res["heldout"]["errors"] == errors and res["heldout"]["n"] == 200
    verified = CliRunner().invoke(cli, ["verify", str(report), "--json"])
    assert verified.exit_code == 0, verified.stderr
    # another label map in the report: verify reloads the data with it and disagrees
    document["inputs"]["data"]["label_map"] = "0-5:0,6-9:1"
    document["inputs"]["heldout"]["label_map"] = "0-5:0,6-9:1"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document))
    refused = CliRunner().invoke(cli, ["verify", str(forged), "--json"])
    assert refused.exit_code == 1, refused.stderr
    fields = {f["field"]: f for f in json.loads(refused.stdout)["fields"]}
    assert not fields["empirical_risk.estimate"]["agree"]
    assert not fields["agreement.checkpoint_errors"]["agree"]


def test_without_the_map_the_ten_class_labels_do_not_fit_a_two_class_model(task: Path) -> None:
    result = CliRunner().invoke(cli, _gaussian(task))
    assert result.exit_code == 3, result.output
    assert "label" in result.stderr.lower()


def test_the_map_is_part_of_the_data_identity(task: Path) -> None:
    """Same file, other map: other labels, same examples (the held-out disjointness check
    still sees the same examples)."""
    plain = load_dataset(task / "train.npz")
    mapped = load_dataset(task / "train.npz", label_map=BINARY)
    assert torch.equal(mapped.y, (plain.y >= 5).long())
    assert (
        mapped.provenance.files[0].sha256
        == hashlib.sha256((task / "train.npz").read_bytes()).hexdigest()
    )

"""`pacbound certify --method gaussian` on users' own models (issue #11): refusals that keep
certificates true, and statements about the user's checkpoint itself."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pacbound.bounds.checkpoint import checkpoint_bound, disagreement_bound
from pacbound.bounds.result import BoundResult
from pacbound.cli.main import cli
from pacbound.models import mlp
from pacbound.report.document import results_hash

USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(6, 8)
            self.dummy = nn.Linear(8, 2)
            self.out = nn.Linear(8, 2)
            self.out.weight = self.dummy.weight

        def forward(self, x):
            return self.out(torch.relu(self.hidden(x)))


    class Memo(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 2)
            self.register_buffer("table", torch.zeros(4, dtype=torch.int64))

        def forward(self, x):
            return self.fc(x) + self.table.sum().float()


    def tied():
        return Tied()


    def memo():
        return Memo()


    def wide():
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 10))


    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 2)
            self.register_buffer("scale", torch.tensor(2.0), persistent=False)

        def forward(self, x):
            return self.fc(x * self.scale)


    def scaled():
        return Scaled()
    """
)


def _save(module: torch.nn.Module, path: Path) -> None:
    save_file({k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}, path)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user")
    (root / "usermodels.py").write_text(USER_MODULE)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (600,), generator=gen)
    x = torch.randn(600, 6, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    np.savez(root / "train.npz", x=x[:400].numpy(), y=y[:400].numpy())
    np.savez(root / "test.npz", x=x[400:].numpy(), y=y[400:].numpy())
    np.savez(root / "inputs.npz", x=(x[400:] + 0.05).numpy())
    torch.manual_seed(0)
    model = mlp(in_features=6, hidden=[8], num_classes=2)
    _save(model, root / "init.safetensors")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x[:400]), y[:400])
        opt.zero_grad()
        loss.backward()
        opt.step()
    _save(model, root / "final.safetensors")
    torch.manual_seed(1)
    other = mlp(in_features=6, hidden=[8], num_classes=2)
    _save(other, root / "random.safetensors")
    return root


def _run(task: Path, checkpoint: str, *extra: str, arch: list[str] | None = None) -> object:
    arch = arch or [
        "--arch",
        "mlp",
        "--arch-kwargs",
        '{"in_features": 6, "hidden": [8], "num_classes": 2}',
    ]
    args = [
        "certify",
        str(task / checkpoint),
        *arch,
        "--data",
        str(task / "train.npz"),
        "--prior-scales",
        "1e-3:1:31",
        "--mc-passes",
        "1",
        "--quiet",
        *extra,
    ]
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("usermodels:tied", "shares weights (out.weight = dummy.weight)"),
        ("usermodels:memo", "buffers that differ from the --init file or a fresh build: table"),
    ],
)
def test_unsound_user_models_are_refused_with_one_line(
    task: Path, monkeypatch: pytest.MonkeyPatch, factory: str, message: str
) -> None:
    monkeypatch.syspath_prepend(str(task))
    module = __import__("usermodels")
    model = getattr(module, factory.split(":")[1])()
    if factory.endswith("memo"):
        with torch.no_grad():
            model.table.copy_(torch.tensor([1, 0, 1, 1]))  # data-derived
    _save(model, task / f"{factory.split(':')[1]}.safetensors")
    result = _run(
        task,
        f"{factory.split(':')[1]}.safetensors",
        "--prior",
        "zero",
        "--sampler",  # auto would draw the tied weight once per example (functional)
        "layers",
        arch=["--arch", factory],
    )
    assert result.exit_code == 3, result.output  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert message in lines[0]


def test_unlabeled_inputs_give_a_certificate_for_the_checkpoint(task: Path) -> None:
    result = _run(
        task,
        "final.safetensors",
        "--init",
        str(task / "init.safetensors"),
        "--unlabeled",
        str(task / "inputs.npz"),
        "--disagreement-delta",
        "0.02",
        "--json",
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    res = json.loads(result.stdout)["results"]  # type: ignore[attr-defined]
    ckpt, dis = res["checkpoint"], res["checkpoint"]["disagreement"]
    assert dis["source"] == "unlabeled" and dis["inputs"] == 200 and dis["delta"] == 0.02
    assert ckpt["bound_on_certified"] == res["bound"]
    expected = checkpoint_bound(
        BoundResult(res["bound"], "pac-bayes-kl", 0.0, res["n"], 0.05),
        disagreement_bound(dis["disagreements"], m=200, delta=0.02),
    )
    assert ckpt["bound"] == expected.value >= res["bound"]
    assert ckpt["delta_total"] == pytest.approx(0.07)
    agree = res["agreement"]
    assert agree["examples"] == 400 and 0.0 <= agree["disagreement_rate"] <= 1.0
    assert 0.0 <= agree["checkpoint_error_rate"] < 0.2  # a well-separated task


def test_heldout_inputs_are_used_when_no_unlabeled_set_is_given(task: Path) -> None:
    result = _run(
        task,
        "final.safetensors",
        "--init",
        str(task / "init.safetensors"),
        "--heldout",
        str(task / "test.npz"),
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "bound on the checkpoint itself" in result.stdout  # type: ignore[attr-defined]
    assert "heldout inputs" in result.stdout  # type: ignore[attr-defined]


def test_data_prior_posterior_starts_at_the_checkpoint(task: Path) -> None:
    """Two different checkpoints must give two different certificates (before issue #11
    the posterior started at the prior mean and both gave the same bound)."""
    values = []
    for checkpoint in ("final.safetensors", "random.safetensors"):
        result = _run(
            task,
            checkpoint,
            "--prior",
            "data",
            "--prior-epochs",
            "2",
            "--posterior",
            "diagonal",
            "--posterior-epochs",
            "1",
            "--keep-last",
            "--json",
        )
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        res = json.loads(result.stdout)["results"]  # type: ignore[attr-defined]
        assert set(res["prior"]["error"]) == {"prior_split", "bound_split"}
        values.append((res["bound"], res["agreement"]["checkpoint_error_rate"]))
    assert values[0] != values[1]
    assert values[0][1] < values[1][1]  # the trained checkpoint errs less than the random one


def test_an_init_nearly_equal_to_the_checkpoint_is_warned_about(task: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(task / "final.safetensors")
    state["1.bias"][0] += 1e-6
    save_file(state, task / "nudged.safetensors")
    result = _run(
        task,
        "final.safetensors",
        "--init",
        str(task / "nudged.safetensors"),
        "--json",
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "Warning: --init is nearly the checkpoint's trained weights" in " ".join(
        result.stderr.split()  # type: ignore[attr-defined]
    )
    report = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert any("nearly the checkpoint" in w for w in report["warnings"])


def test_chance_level_comes_from_the_model_outputs(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(task))
    model = __import__("usermodels").wide()
    _save(model, task / "wide.safetensors")
    result = _run(
        task, "wide.safetensors", "--prior", "zero", "--json", arch=["--arch", "usermodels:wide"]
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    verdict = json.loads(result.stdout)["results"]["verdict"]  # type: ignore[attr-defined]
    assert verdict["num_classes"] == 10 and verdict["chance_error"] == pytest.approx(0.9)


def test_verify_rederives_the_checkpoint_statements(task: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    posterior = tmp_path / "posterior.safetensors"
    result = _run(
        task,
        "final.safetensors",
        "--init",
        str(task / "init.safetensors"),
        "--unlabeled",
        str(task / "inputs.npz"),
        "--output",
        str(report),
        "--save-posterior",
        str(posterior),
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    ok = CliRunner().invoke(cli, ["verify", str(report)])
    assert ok.exit_code == 0, ok.output
    original = json.loads(report.read_text())
    tampered = [
        ("checkpoint", "bound", lambda v: v * 0.5),
        ("agreement", "disagreement_rate", lambda v: v / 2 + 1e-3),
    ]
    for block, name, change in tampered:
        doc = json.loads(json.dumps(original))
        doc["results"][block][name] = change(doc["results"][block][name])
        doc["results_sha256"] = results_hash(doc["results"])  # a careful forger
        forged = tmp_path / f"forged_{block}.json"
        forged.write_text(json.dumps(doc))
        bad = CliRunner().invoke(cli, ["verify", str(forged), "--json"])
        assert bad.exit_code == 1, (block, bad.output)
        fields = {f["field"]: f for f in json.loads(bad.stdout)["fields"]}
        disagreeing = [name for name, f in fields.items() if not f["agree"]]
        assert disagreeing == [f"{block}.{name}"], disagreeing
    # The statement without its recorded inputs cannot be re-derived.
    doc = json.loads(json.dumps(original))
    del doc["inputs"]["unlabeled"]
    doc["results_sha256"] = results_hash(doc["results"])
    forged = tmp_path / "no_inputs.json"
    forged.write_text(json.dumps(doc))
    assert CliRunner().invoke(cli, ["verify", str(forged)]).exit_code == 1


def test_a_non_persistent_buffer_is_checked_against_a_fresh_build(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffer the --init file cannot hold (non-persistent) is compared with the fresh
    build of --arch, not refused for being absent from the file."""
    monkeypatch.syspath_prepend(str(task))
    torch.manual_seed(0)
    model = __import__("usermodels").scaled()
    _save(model, task / "scaled_init.safetensors")
    with torch.no_grad():
        model.fc.weight.add_(0.1)
    _save(model, task / "scaled.safetensors")
    args = ["--init", str(task / "scaled_init.safetensors")]
    result = _run(task, "scaled.safetensors", *args, arch=["--arch", "usermodels:scaled"])
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]


def test_init_buffers_that_differ_from_a_fresh_build_are_warned_about(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both files hold the same data-derived table: the buffer check passes (they agree),
    but the --init file's buffer is not what the architecture builds (review, round 2)."""
    monkeypatch.syspath_prepend(str(task))
    model = __import__("usermodels").memo()
    with torch.no_grad():
        model.table.copy_(torch.tensor([1, 0, 1, 1]))
    _save(model, task / "memo_init.safetensors")
    with torch.no_grad():
        model.fc.weight.add_(0.1)
    _save(model, task / "memo_trained.safetensors")
    result = _run(
        task,
        "memo_trained.safetensors",
        "--init",
        str(task / "memo_init.safetensors"),
        "--json",
        arch=["--arch", "usermodels:memo"],
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    report = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert any("buffers table differ from a fresh build" in w for w in report["warnings"])

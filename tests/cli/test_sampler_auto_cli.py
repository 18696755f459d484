"""`certify --method gaussian` with `--sampler auto` and `--max-memory` (issue #13): a user's
module with a bare nn.Parameter used through raw torch ops is certified through the generic
functional path, the choice and the budget are recorded, and a budget too small for one
example names the smallest one that works."""

from __future__ import annotations

import importlib
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pacbound.cli.main import cli

USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class RawGain(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(6))
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(torch.tanh(torch.mul(x, self.gain)))


    def rawgain():
        return RawGain()


    class RawRead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(x) @ self.fc.weight.T))


    def rawread():
        return RawRead()


    def plain():
        return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))
    """
)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("auto")
    (root / "automodels.py").write_text(USER_MODULE)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (300,), generator=gen)
    x = torch.randn(300, 6, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
    return root


def _certify(
    task: Path, monkeypatch: pytest.MonkeyPatch, factory: str, *extra: str
) -> tuple[int, str, dict[str, Any]]:
    monkeypatch.chdir(task)  # the factory module is found from the working directory
    monkeypatch.syspath_prepend(str(task))
    torch.manual_seed(0)
    model = getattr(importlib.import_module("automodels"), factory)()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, task / f"{factory}.safetensors")
    out = task / f"{factory}.json"
    args = [
        "certify",
        str(task / f"{factory}.safetensors"),
        "--arch",
        f"automodels:{factory}",
        "--data",
        str(task / "train.npz"),
        "--prior",
        "zero",
        "--prior-scales",
        "1e-2:1:9",
        "--mc-passes",
        "1",
        "--quiet",
        "-o",
        str(out),
        *extra,
    ]
    result = CliRunner().invoke(cli, args)
    doc = json.loads(out.read_text()) if result.exit_code == 0 else {}
    return result.exit_code, result.output, doc


def test_a_bare_parameter_model_goes_functional_and_is_recorded(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output, doc = _certify(task, monkeypatch, "rawgain", "--max-memory", "64MiB")
    assert code == 0, output
    assert doc["options"]["sampler"] == "functional"
    assert doc["options"]["max_memory"] == 64 << 20
    assert doc["results"]["posterior"]["sampler"] == {"path": "functional"}
    assert doc["results"]["posterior"]["num_parameters"] == 6 + 6 * 2 + 2


def test_a_layer_weight_read_by_a_raw_op_goes_functional(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output, doc = _certify(task, monkeypatch, "rawread")
    assert code == 0, output
    assert doc["options"]["sampler"] == "functional"  # the probe saw the raw read
    code, output, _ = _certify(task, monkeypatch, "rawread", "--sampler", "layers")
    assert code == 3 and "--sampler functional" in " ".join(output.split())


def test_a_model_with_layer_samplers_stays_on_the_layers(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output, doc = _certify(task, monkeypatch, "plain")
    assert code == 0, output
    assert doc["options"]["sampler"] == "layers"
    assert doc["options"]["max_memory"] >= 192 << 20  # auto: a quarter of memory, resolved
    assert doc["results"]["posterior"]["sampler"] == {
        "path": "layers",
        "layers": {"GaussianLayerNorm": 1, "GaussianLinear": 2},
    }


def test_a_budget_too_small_for_one_example_names_the_smallest(
    task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output, _ = _certify(task, monkeypatch, "rawgain", "--max-memory", "100")
    assert code == 3, output
    need = 3 * (6 + 12 + 2) * 4  # three float32 copies of one example's 20 parameters
    assert f"smallest budget that works is {need} B ({need} bytes)" in " ".join(output.split())

"""Issue #7 item 4: the same ``certify`` command with the same seed gives byte-identical results.

Every run is a fresh ``python -m pacbound`` process (no state shared through the interpreter,
the RNG or caches); the ``results`` blocks must serialize to the same bytes and their recorded
``results_sha256`` must agree. A different seed must change the stochastic methods' results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pacbound.models import mlp

ARCH = '{"in_features": 6, "hidden": [8], "num_classes": 2}'

#: (method arguments, whether the seed drives a random choice in the certificate).
CASES: dict[str, tuple[tuple[str, ...], bool]] = {
    "gaussian-isotropic": (("--method", "gaussian", "--posterior", "isotropic"), True),
    "gaussian-diagonal": (
        ("--method", "gaussian", "--posterior", "diagonal", "--posterior-epochs", "2"),
        True,
    ),
    "gaussian-data-prior": (
        ("--method", "gaussian", "--prior", "data", "--prior-epochs", "2"),
        True,
    ),
    "subspace": (
        ("--method", "subspace", "--d", "20", "--levels", "4", "--subspace-epochs", "2"),
        True,
    ),
    "quantize": (("--method", "quantize", "--levels", "4,8"), False),
}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("determinism")
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (300,), generator=gen)
    x = torch.randn(300, 6, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
    torch.manual_seed(0)
    model = mlp(in_features=6, hidden=[8], num_classes=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "init.safetensors")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, root / "final.safetensors")
    return root


def _command(task: Path, case: str, seed: int) -> list[str]:
    method_args, _ = CASES[case]
    args = [
        sys.executable,
        "-m",
        "pacbound",
        "certify",
        str(task / "final.safetensors"),
        "--arch",
        "mlp",
        "--arch-kwargs",
        ARCH,
        "--data",
        str(task / "train.npz"),
        "--seed",
        str(seed),
        "--json",
        *method_args,
    ]
    if "gaussian" in case:
        args += ["--init", str(task / "init.safetensors"), "--prior-scales", "1e-3:1:61"]
        args += ["--mc-passes", "2"]
    return args


def _run_all(commands: list[list[str]], cwd: Path) -> list[dict[str, Any]]:
    """Run the commands as concurrent fresh processes; their parsed JSON reports, in order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    env.pop("GITHUB_STEP_SUMMARY", None)
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
        for cmd in commands
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        reports.append(json.loads(out))
    return reports


def _canonical(report: dict[str, Any]) -> str:
    return json.dumps(report["results"], sort_keys=True, allow_nan=False)


@pytest.mark.parametrize("case", list(CASES))
def test_same_seed_gives_byte_identical_results(task: Path, tmp_path: Path, case: str) -> None:
    stochastic = CASES[case][1]
    commands = [_command(task, case, 0), _command(task, case, 0)]
    if stochastic:
        commands.append(_command(task, case, 1))
    reports = _run_all(commands, tmp_path)
    first, second = reports[0], reports[1]
    assert _canonical(first) == _canonical(second)
    assert first["results_sha256"] == second["results_sha256"]
    if stochastic:
        other = reports[2]
        assert _canonical(other) != _canonical(first)
        assert other["results_sha256"] != first["results_sha256"]

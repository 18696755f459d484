"""A tiny synthetic task and real reports made from it by the ``certify`` command.

Two Gaussian blobs in 6 dimensions, 400 training and 200 held-out examples, a 6-8-2 MLP.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pacbound.cli.main import cli
from pacbound.models import mlp

ARCH_KWARGS = {"in_features": 6, "hidden": [8], "num_classes": 2}


def make_task(root: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    x = torch.randn(400, 6, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
    np.savez(root / "test.npz", x=x[:200].numpy() + 0.1, y=y[:200].numpy())
    torch.manual_seed(0)
    model = mlp(**ARCH_KWARGS)  # type: ignore[arg-type]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "init.safetensors")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        root / "final.safetensors",
    )
    return root


def model_and_data(task: Path) -> list[str]:
    """The tiny task's checkpoint, architecture and training data, as certify arguments."""
    return [
        str(task / "final.safetensors"),
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(ARCH_KWARGS),
        "--data",
        str(task / "train.npz"),
    ]


def certify_args(task: Path, out: Path, *extra: str) -> list[str]:
    return [
        "certify",
        *model_and_data(task),
        "--init",
        str(task / "init.safetensors"),
        "--prior-scales",
        "1e-3:1:61",
        "--mc-passes",
        "2",
        "--quiet",
        "--output",
        str(out / "report.json"),
        "--save-posterior",
        str(out / "posterior.safetensors"),
        *extra,
    ]


def gaussian_report(task: Path, out: Path, *extra: str) -> Path:
    """Run ``pacbound certify`` into ``out``; return the report path."""
    out.mkdir(parents=True, exist_ok=True)
    result = CliRunner().invoke(cli, certify_args(task, out, *extra))
    assert result.exit_code == 0, result.output
    return out / "report.json"


def quantize_report(task: Path, out: Path, *extra: str) -> Path:
    """Run ``pacbound certify --method quantize`` (levels 4 and 8, so the report records a
    search) into ``out``, with its artifact ``model.pbc``; return the report path."""
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "certify",
        *model_and_data(task),
        "--method",
        "quantize",
        "--levels",
        "4,8",
        "--quiet",
        "--output",
        str(out / "report.json"),
        "--artifact",
        str(out / "model.pbc"),
        *extra,
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out / "report.json"

"""A tiny synthetic task and real reports made from it (certify CLI; compression library).

Two Gaussian blobs in 6 dimensions, 400 training and 200 held-out examples, a 6-8-2 MLP.
The Gaussian report comes from the ``certify`` command itself; the CLI has no compression
method yet, so the quantize report is assembled from ``certify_quantized`` with the same
``build_report`` that ``certify`` uses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

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


def certify_args(task: Path, out: Path, *extra: str) -> list[str]:
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


def quantize_report(task: Path, out: Path) -> Path:
    """A quantize certificate of the tiny model, its artifact file and its report."""
    from pacbound.certify.compression import (
        CompressionOptions,
        certify_quantized,
        seeded_factory,
    )
    from pacbound.io import load_dataset, load_model
    from pacbound.io.files import write_atomic
    from pacbound.report.document import build_report

    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(task / "final.safetensors", arch="mlp", arch_kwargs=ARCH_KWARGS)
    data = load_dataset(task / "train.npz")
    options = CompressionOptions(method="quantize", levels=(4, 8))  # type: ignore[arg-type]
    factory = seeded_factory(lambda: mlp(**ARCH_KWARGS))  # type: ignore[arg-type]
    cert = certify_quantized(
        loaded.module, factory, data.x, data.y, num_classes=data.num_classes, options=options
    )
    from pacbound.certify.compressed_checkpoint import compare_with_checkpoint

    # what certify adds about the checkpoint (training comparison; no held-out set here)
    statements = compare_with_checkpoint(cert, loaded.module, factory, data.x, data.y)
    artifact = cert.message.to_bytes()
    write_atomic(out / "model.pbc", artifact)
    inputs: dict[str, Any] = {
        "model": loaded.to_dict(),
        "data": data.provenance.to_dict(),
        "artifact": {
            "path": str(out / "model.pbc"),
            "sha256": hashlib.sha256(artifact).hexdigest(),
        },
    }
    report = build_report(
        command="certify",
        inputs=inputs,
        options={**options.to_dict(), "delta": options.delta},
        seeds={"seed": options.seed},
        results={**cert.to_dict(), **statements.to_dict()},
        gate={"passed": True, "reasons": [], "exit_zero": False},
        timings=dict(cert.timings),
        warnings=[],
        device="cpu",
    )
    path = out / "report.json"
    path.write_text(json.dumps(report, allow_nan=False, indent=2) + "\n")
    return path

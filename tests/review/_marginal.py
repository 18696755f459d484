"""What the marginal-method reviews share: small options and the CLI runner."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from pacbound.certify.marginal_options import MarginalOptions
from pacbound.cli.main import cli
from pacbound.report.document import results_hash


def small_options(**changes: Any) -> MarginalOptions:
    """A one-point ReLU kernel (depth 1, σ_w = 1, σ_b = 0.1, jitter 1e-6), δ = 0.05 with
    δ_IS = 0.025, 200 draws, two classes; ``changes`` override any of them."""
    base: dict[str, Any] = {
        "kernel": "relu",
        "depth": 1,
        "sigma_w": (1.0,),
        "sigma_b": (0.1,),
        "jitter": (1e-6,),
        "delta": 0.05,
        "seed": 0,
        "is_samples": 200,
        "is_delta": 0.025,
        "max_memory": 1 << 30,
        "num_classes": 2,
    }
    base.update(changes)
    return MarginalOptions(**base)


def run_cli(*args: str) -> tuple[int, str, str]:
    """``pacbound ARGS`` in process: exit code, stdout, stderr."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def leaf(block: Any, path: tuple[str | int, ...]) -> Any:
    """The value at ``path`` in a JSON block."""
    for key in path:
        block = block[key]
    return block


def verify_forged(report: Path, path: tuple[str | int, ...], change: Callable[[Any], Any]) -> int:
    """``verify``'s exit code on ``report`` with the results leaf at ``path`` replaced by
    ``change(value)`` and the results hash recomputed, as a careful forger would."""
    forged = json.loads(report.read_text())
    parent = leaf(forged["results"], path[:-1])
    parent[path[-1]] = change(parent[path[-1]])
    forged["results_sha256"] = results_hash(forged["results"])
    target = report.with_name("forged.json")
    target.write_text(json.dumps(forged))
    return run_cli("verify", str(target))[0]

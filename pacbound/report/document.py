"""The report document (schema v2): provenance around a certificate.

Field by field documentation: ``docs/report-schema.md``; JSON Schema:
``pacbound/report/schema_v2.json``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pacbound._version import __version__

SCHEMA_VERSION = 2


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str, world: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Tool and library versions, platform, device and torch's intra-op thread count in
    effect (``torch_threads``: ``verify`` retrains with it by default, since training can
    differ in the last bits at another count); ``world``: the run's processes
    (``world_size``, ``backend``, ``launcher``, ``rank_devices``), when recorded."""
    import numpy
    import scipy
    import torch

    return {
        "pacbound": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        **(world or {}),
    }


def recorded_threads(report: Mapping[str, Any]) -> int | None:
    """The torch intra-op thread count a report was made with: ``environment.torch_threads``,
    else (older reports) ``options.threads`` when ``--threads`` was given, else ``None``."""
    value = report.get("environment", {}).get("torch_threads")
    if value is None:
        value = report.get("options", {}).get("threads")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def results_hash(results: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the results block (sorted keys, no whitespace)."""
    canonical = json.dumps(results, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_report(
    *,
    command: str,
    inputs: dict[str, Any],
    options: dict[str, Any],
    seeds: dict[str, int],
    results: Mapping[str, Any],
    gate: dict[str, Any],
    timings: dict[str, float],
    warnings: list[str],
    device: str,
    world: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the report; ``results`` is the certificate block that ``results_sha256`` covers.
    ``world`` describes the run's processes (``environment``; never compared by verify)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "argv": ["pacbound", *sys.argv[1:]],
        "environment": environment(device, world),
        "inputs": inputs,
        "options": options,
        "seeds": seeds,
        "results": dict(results),
        "results_sha256": results_hash(results),
        "gate": gate,
        "timings_seconds": timings,
        "warnings": warnings,
    }

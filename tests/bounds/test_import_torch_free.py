"""pacbound.bounds is pure math: importing it must not import torch (STYLE.md, "The shape")."""

from __future__ import annotations

import subprocess
import sys


def test_import_pacbound_bounds_does_not_import_torch() -> None:
    code = "import sys, pacbound.bounds; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_check_itself_can_fail() -> None:
    # Guard against a vacuous subprocess check: an imported module is detected (a light one,
    # json, stands in for torch to keep this fast).
    code = "import sys, pacbound.bounds, json; assert 'json' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode != 0

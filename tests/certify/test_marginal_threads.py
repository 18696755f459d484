"""An honest marginal certificate verifies across BLAS thread counts, a forged one does not.

The certify phase runs in two fresh processes, at ``OPENBLAS_NUM_THREADS=1`` and ``=2``
(LAPACK's rounding depends on it: measured here 2e-16 relative on binary MNIST, n = 150);
each results block is then checked against the other exactly as ``verify`` checks a report
against its recomputation (:func:`pacbound.verify.engine.tolerances`): symmetric 1e-9 for
the floats, one-sided for the bound-side leaves, whose reported values must lie on the safe
side of the recomputed ones (within the 1e-10 floating-point slack the certificate's 1e-9
margin covers).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pacbound.certify.marginal_method import MARGINAL
from pacbound.verify.engine import tolerances
from pacbound.verify.fields import FieldCheck, compare_results

MNIST = Path(__file__).resolve().parents[2] / "examples" / "data" / "mnist"

SCRIPT = """
import json, sys
import numpy as np, torch
from pacbound.certify.marginal import Sample, certify_point
from pacbound.certify.marginal_options import MarginalOptions
d = np.load(sys.argv[1])
options = MarginalOptions(kernel="relu", depth=2, sigma_w=(1.4142135623730951,),
    sigma_b=(0.0,), jitter=1e-6, delta=0.05, seed=0, is_samples=100, is_delta=0.01,
    max_memory=1 << 30, num_classes=2)
sample = Sample(torch.from_numpy(d["x"]), d["y"].astype(np.int64), 2, None)
print(json.dumps(certify_point(0, sample, options).results))
"""


def _certify(data: Path, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(data)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    results: dict[str, Any] = json.loads(done.stdout)
    return results


@pytest.fixture(scope="module")
def by_threads(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    from pacbound.io import load_dataset

    data = load_dataset(MNIST, subset=150, label_map="0-4:0,5-9:1")
    path = tmp_path_factory.mktemp("threads") / "d.npz"
    np.savez(path, x=data.x.double().numpy(), y=data.y.numpy())
    return {threads: _certify(path, threads) for threads in (1, 2)}


def _disagreeing(reported: dict[str, Any], recomputed: dict[str, Any]) -> list[str]:
    checks = compare_results(
        reported, recomputed, skip=tuple(MARGINAL.choice_fields), **tolerances(MARGINAL)
    )
    return [c.field for c in checks if not c.agree]


def test_an_honest_certificate_verifies_at_the_other_thread_count(
    by_threads: dict[int, dict[str, Any]],
) -> None:
    one, two = by_threads[1], by_threads[2]
    assert _disagreeing(one, two) == [] and _disagreeing(two, one) == []
    assert one["bound"] == pytest.approx(two["bound"], rel=1e-12)  # the same certificate
    assert one["log_orthant"]["reproducibility_margin"] == 1e-9


@pytest.mark.parametrize("reported_at", [1, 2])
def test_a_bound_side_leaf_forged_unsafe_fails_at_the_other_thread_count(
    by_threads: dict[int, dict[str, Any]], reported_at: int
) -> None:
    """Each bound-side leaf moved 2e-10 (relative) the unsafe way is refused; the same move
    the safe way is accepted."""
    reported, recomputed = by_threads[reported_at], by_threads[3 - reported_at]
    for field, side in MARGINAL.bound_fields.items():
        if side == "exact":  # bit for bit, either way: test_an_exact_leaf_forged_one_ulp...
            continue
        *path, last = field.split(".")
        for toward, agrees in (("unsafe", False), ("safe", True)):
            forged = json.loads(json.dumps(reported))
            node = forged
            for key in path:
                node = node[key]
            up = (side == "upper") == (toward == "safe")
            node[last] += (1 if up else -1) * 2e-10 * abs(node[last])
            assert (_disagreeing(forged, recomputed) == []) is agrees, (field, toward)
            if not agrees:
                assert _disagreeing(forged, recomputed) == [field]


@pytest.mark.parametrize("reported_at", [1, 2])
def test_an_exact_leaf_forged_one_ulp_either_way_fails_at_the_other_thread_count(
    by_threads: dict[int, dict[str, Any]], reported_at: int
) -> None:
    """Every float leaf below an ``"exact"`` field agrees bit for bit across thread counts,
    and one ulp either way is refused."""
    reported, recomputed = by_threads[reported_at], by_threads[3 - reported_at]
    exact = [f for f, side in MARGINAL.bound_fields.items() if side == "exact"]
    checks = compare_results(reported, recomputed, **tolerances(MARGINAL))
    under = [c for c in checks if c.side == "exact" and type(c.reported) is float]
    assert {c.field.split(".")[0].split("[")[0] for c in under} == {f.split(".")[0] for f in exact}
    for check in under:
        assert check.reported == check.recomputed, check.field
        for way in (math.inf, -math.inf):
            forged = FieldCheck(
                check.field, math.nextafter(check.reported, way), check.recomputed,
                check.rel_tol, check.side, check.unsafe_rel_tol,
            )  # fmt: skip
            assert not forged.agree, (check.field, way)


def test_only_the_marginal_method_compares_bound_side_leaves_one_sidedly() -> None:
    """gaussian, subspace and quantize stay bit for bit (no tolerance, no sides)."""
    from pacbound.certify.registry import METHODS

    for name, method in METHODS.items():
        if name != "marginal":
            assert tolerances(method) == {"rel_tol": 0.0, "sides": {}, "unsafe_rel_tol": 0.0}
    assert tolerances(MARGINAL)["unsafe_rel_tol"] == 1e-10
    # the margin certify pays covers the unsafe slack: an accepted bound, at most 1e-10 below
    # the recomputed one, is still above the bound before the 1e-9 margin
    raw = 0.3
    paid = raw * (1 + 1e-9)
    assert paid * (1 - 1e-10) > raw
    checks = compare_results({"bound": paid * (1 - 2e-10)}, {"bound": paid}, **tolerances(MARGINAL))
    assert [c.agree for c in checks] == [False]

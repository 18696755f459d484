"""Architecture-only certificates (issue #15): the random sampler's bound on binary MNIST.

    python benchmarks/bench_marginal.py                       # n = 1000, 2000, 5000, 10000
    python benchmarks/bench_marginal.py --n 1000 2000         # a quick run
    python benchmarks/bench_marginal.py --gaussian            # the comparison rows

``--gaussian``: for the same n, the Gaussian PAC-Bayes certificate (prior at the init,
diagonal posterior; ``benchmarks/_mnist_gaussian.py``, the recipe of Dziugaite & Roy's T-600
row) of an SGD-trained MLP of the same depth (784-256-256-2), trained from its saved init for
``ceil(100000 / n)`` epochs (the same number of SGD steps at every n) and its posterior for
``ceil(300000 / n)`` epochs; writes ``benchmarks/results/marginal_gaussian_mlp.json``.

Task: MNIST, labels 0–4 → 0 and 5–9 → 1, the first n training images, pixels / 255
(``pacbound.io.datasets.load_dataset``, as the CLI loads them), flattened (d = 784).

Prior, fixed in advance (no grid, nothing tuned on S): the NNGP of a fully connected ReLU
network with 2 hidden layers, σ_w² = 2 (He scaling: the kernel's diagonal is the same at every
layer), σ_b = 0, plus white noise of variance jitter = 1e-6 (absolute, not derived from S;
the kernel's diagonal is ≈ 0.22), i.e. f ~ GP(0, k_NNGP + 1e-6·1[x = x']).

Certificate (Q = prior | fits S, L̂(Q) = 0): δ = 0.05 in total, δ_IS = 0.01 for the
certified lower bound on ln P(U) (EP-cavity-guided GHK importance sampling with
``--samples`` draws, seed 0, Markov) and δ_PB = 0.04 for the PAC-Bayes-kl bound
L(Q) ≤ 1 − exp(−[−ln P̲(U) + ln(2√n/δ_PB)]/n). EP (damping 0.8, tol 1e-3 on the
scale-free site parameters) gives ln Z_EP, an approximation shown for information, and the
proposal of the importance sampler; the "EP bound" puts ln Z_EP in the same formula and is
NOT a certificate (it is what published numbers report).

Each n runs in a fresh process (``--one``) so its peak RSS (``ru_maxrss``) is its own; the wall
seconds of each stage and the load averages before and after are recorded (the machine has
2 cores shared with other jobs). OpenBLAS is pinned to one thread unless
``OPENBLAS_NUM_THREADS`` is set: on this shared machine its threaded Cholesky was 5–10×
slower than the single-threaded one (n = 4000: 6.4 s against 0.9 s).

Prints one JSON object and writes ``benchmarks/results/marginal.json`` (``--out`` to change).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "mnist"
DEPTH, SIGMA_W2, SIGMA_B, JITTER = 2, 2.0, 0.0, 1e-6
DELTA_TOTAL, DELTA_IS = 0.05, 0.01
DELTA_PB = 0.04  # DELTA_TOTAL − DELTA_IS, written out (it is checked below)
EP_TOL, EP_DAMPING, EP_MAX_ITER = 1e-3, 0.8, 200
IS_SEED = 0


def _binary_mnist(n: int) -> tuple[Any, Any]:
    import numpy as np

    from pacbound.io.datasets import load_dataset

    ds = load_dataset(DATA, subset=n)
    x = ds.x.numpy().reshape(n, -1).astype(np.float64)
    y = (ds.y.numpy() >= 5).astype(np.int64)
    return x, y


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process (the wall time depends on the machine's load)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one(n: int, samples: int) -> dict[str, Any]:
    """Everything for one n, in this process."""
    from pacbound.marginal import (
        KernelSpec,
        certified_log_orthant,
        ep_orthant,
        kernel_matrix,
        marginal_bound,
        matrix_bytes,
    )
    from pacbound.marginal._linalg import cholesky_lower

    assert math.isclose(DELTA_PB + DELTA_IS, DELTA_TOTAL) and DELTA_PB + DELTA_IS <= DELTA_TOTAL
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    x, y = _binary_mnist(n)
    seconds["load"] = time.perf_counter() - t0
    spec = KernelSpec("relu", DEPTH, math.sqrt(SIGMA_W2), SIGMA_B, JITTER)
    t = time.perf_counter()
    cov = kernel_matrix(spec, x)  # binary: D K D, computed in place below
    signs = 2.0 * y - 1.0
    cov *= signs[:, None]
    cov *= signs[None, :]
    seconds["kernel"] = time.perf_counter() - t
    t = time.perf_counter()
    chol = cholesky_lower(cov, what="kernel matrix", jitter=JITTER)
    seconds["cholesky"] = time.perf_counter() - t
    t = time.perf_counter()
    ep = ep_orthant(cov, tol=EP_TOL, damping=EP_DAMPING, max_iter=EP_MAX_ITER, cholesky=chol)
    seconds["ep"] = time.perf_counter() - t
    t = time.perf_counter()
    lower = certified_log_orthant(
        cov, samples=samples, seed=IS_SEED, delta=DELTA_IS, ep=ep, cholesky=chol
    )
    seconds["importance_sampling"] = time.perf_counter() - t
    bound = marginal_bound(lower.log_lower, n, DELTA_PB)
    ep_bound = marginal_bound(min(ep.log_z, 0.0), n, DELTA_PB)
    seconds["total"] = time.perf_counter() - t0
    return {
        "n": n,
        "kernel": spec.to_dict(),
        "positives": int(y.sum()),
        "ep": ep.to_dict(),
        "ep_log_z": ep.log_z,
        "certified": lower.to_dict(),
        "log_p_u_estimate": lower.log_estimate,
        "log_p_u_lower": lower.log_lower,
        "gap_nats": ep.log_z - lower.log_lower,
        "gap_estimate_nats": ep.log_z - lower.log_estimate,
        "bound": bound.value,
        "bound_terms": bound.to_dict(),
        "ep_bound_not_a_certificate": ep_bound.value,
        "delta": {"total": DELTA_TOTAL, "pac_bayes": DELTA_PB, "importance_sampling": DELTA_IS},
        "seconds": seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "cpu_seconds": _cpu_seconds(),
        "matrix_bytes_estimate_gib": matrix_bytes(n, 2) / 2**30,
    }


def gaussian_row(n: int) -> dict[str, Any]:
    """The Gaussian certificate of an SGD-trained MLP of the NNGP's depth on the same n."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _mnist_gaussian import add_common_arguments, run

    from pacbound.posterior.priors import PriorMean

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    args = parser.parse_args([])
    args.sgd_epochs, args.posterior_epochs = math.ceil(1e5 / n), math.ceil(3e5 / n)
    args.posterior_lr, args.p_min = 0.1, 0.1  # T-600's recipe
    return run(
        args,
        name=f"gaussian-mlp-binary-mnist-n{n}",
        hidden=[256] * DEPTH,
        label_map="0-4:0,5-9:1",
        prior=PriorMean.INIT,
        delta=0.035,
        mc_delta=0.01,
        published={},
        n=n,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--gaussian", action="store_true", help="the Gaussian MLP rows")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    default = "marginal_gaussian_mlp.json" if args.gaussian else "marginal.json"
    args.out = args.out or ROOT / "benchmarks/results" / default
    if args.one is not None:
        row = gaussian_row(args.one) if args.gaussian else one(args.one, args.samples)
        print(json.dumps(row, allow_nan=False))
        return
    rows = []
    for n in args.n:
        load_before = os.getloadavg()
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--samples", str(args.samples)]
            + (["--gaussian"] if args.gaussian else []),
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            row: dict[str, Any] = {"n": n, "exit_code": proc.returncode, "log": proc.stderr[-2000:]}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.setdefault("n", n)
        row.update(wall_seconds=wall, load_before=load_before, load_after=os.getloadavg())
        rows.append(row)
        print(
            json.dumps(
                {
                    k: row.get(k)
                    for k in ("n", "bound", "ep_log_z", "log_p_u_lower", "gap_nats", "wall_seconds")
                }
            ),
            file=sys.stderr,
            flush=True,
        )
    what = (
        "Gaussian PAC-Bayes, SGD-trained MLP 784-256-256-2, prior at the init"
        if args.gaussian
        else "marginal-likelihood certificate, FC ReLU NNGP"
    )
    result = {
        "benchmark": f"{what}, binary MNIST (0-4 vs 5-9)",
        "samples": args.samples,
        "is_seed": IS_SEED,
        "ep": {"tol": EP_TOL, "damping": EP_DAMPING, "max_iter": EP_MAX_ITER},
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "rows": rows,
    }
    text = json.dumps(result, indent=2, allow_nan=False)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

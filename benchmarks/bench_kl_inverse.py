"""Throughput of the vectorized kl⁻¹ (pacbound.bounds.kl_inv_upper), single-threaded.

Run:  .venv/bin/python benchmarks/bench_kl_inverse.py [--size 1000000] [--repeats 3]

Draws ``size`` (q, c) pairs from a few realistic distributions, times one vectorized call per
repeat, keeps the best, and prints one JSON object with inversions per second per
distribution. BLAS/OpenMP threads are pinned to 1 before NumPy is imported.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from pacbound.bounds import kl_inv_upper  # noqa: E402

Sampler = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def _pac_bayes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Certificates: L̂ ∈ [0, 0.2], c = [KL + ln(2√n/δ)]/n, KL 10..1e5 nats, n 1e3..1e6."""
    q = rng.uniform(0.0, 0.2, size)
    kl = 10 ** rng.uniform(1, 5, size)
    n = np.round(10 ** rng.uniform(3, 6, size))
    c = (kl + np.log(2 * np.sqrt(n) / 0.025)) / n
    return q, c


def _monte_carlo(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo Chernoff: ê ∈ [0, 0.1], c = ln(1/δ′)/m, m 1e3..3e5 draws, δ′ = 0.01."""
    q = rng.uniform(0.0, 0.1, size)
    m = np.round(10 ** rng.uniform(3, np.log10(3e5), size))
    return q, np.log(100.0) / m


def _extreme(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Stress: q log-uniform 1e-12..1 (half mirrored to 1 − q), c log-uniform 1e-15..50."""
    q = 10 ** rng.uniform(-12, 0, size)
    mirror = rng.random(size) < 0.5
    q[mirror] = 1.0 - q[mirror]
    c = 10 ** rng.uniform(-15, np.log10(50), size)
    return q, c


def _uniform(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """q uniform on [0, 1], c log-uniform 1e-6..10."""
    return rng.uniform(0.0, 1.0, size), 10 ** rng.uniform(-6, 1, size)


DISTRIBUTIONS: dict[str, Sampler] = {
    "pac_bayes": _pac_bayes,
    "monte_carlo": _monte_carlo,
    "uniform": _uniform,
    "extreme": _extreme,
}


def bench(size: int, repeats: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    rates: dict[str, float] = {}
    for name, sampler in DISTRIBUTIONS.items():
        q, c = sampler(rng, size)
        kl_inv_upper(q[:1000], c[:1000])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            kl_inv_upper(q, c)
            best = min(best, time.perf_counter() - start)
        rates[name] = round(size / best)
    return {
        "benchmark": "kl_inv_upper",
        "size": size,
        "repeats": repeats,
        "seed": seed,
        "threads": 1,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "inversions_per_second": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(bench(args.size, args.repeats, args.seed)))


if __name__ == "__main__":
    main()

"""Kronecker projector throughput and memory: one P·w and one Pᵀ·g for D = 10⁷, d = 10⁵.

Run: ``.venv/bin/python benchmarks/bench_projector.py [--device cuda]``. Prints one JSON object:
milliseconds per product (best of ``--repeat``), the projector's own memory, and the process's
peak resident memory (ru_maxrss, which includes the Python interpreter and torch itself) before
and after; the budget is 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc

import torch

from pacbound.compressors import KroneckerProjector

GIB = 1 << 30


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _timed_ms(fn: object, repeat: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--D", type=int, default=10**7)
    parser.add_argument("--d", type=int, default=10**5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rss_before = _peak_rss_bytes()
    tracemalloc.start()
    start = time.perf_counter()
    projector = KroneckerProjector(args.D, args.d, seed=0, device=device)
    build_ms = 1000 * (time.perf_counter() - start)
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(args.d, generator=generator).to(device)
    g = torch.randn(args.D, generator=generator).to(device)
    matvec_ms = _timed_ms(lambda: projector.matvec(w), args.repeat, device)
    rmatvec_ms = _timed_ms(lambda: projector.rmatvec(g), args.repeat, device)
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result = {
        "D": args.D,
        "d": args.d,
        "factor_shapes": list(projector.shapes),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "build_ms": round(build_ms, 1),
        "matvec_ms": round(matvec_ms, 1),
        "rmatvec_ms": round(rmatvec_ms, 1),
        "projector_bytes": projector.memory_bytes,
        "vector_bytes": 4 * (args.D + args.d),
        "python_heap_peak_bytes": python_peak,
        "peak_rss_before_bytes": rss_before,
        "peak_rss_bytes": _peak_rss_bytes(),
        "fits_in_1_gib": _peak_rss_bytes() < GIB,
    }
    if device.type == "cuda":
        result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    print(json.dumps(result, allow_nan=False))


if __name__ == "__main__":
    main()

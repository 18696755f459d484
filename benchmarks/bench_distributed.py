"""Certificate Monte-Carlo and error counting: 2 gloo processes vs 1 process (issue #14).

Measured side by side in one run, every process at one thread: the per-example Monte-Carlo
pass of a Gaussian posterior (``count_stochastic_errors``) and the deterministic error count
(``count_errors``) of a built-in model on MNIST-shaped inputs, first in one plain process,
then in ``--processes`` processes joined in a gloo group (torch.multiprocessing; each rank
counts its shard of the examples, the integer counts are all-reduced). The draws are keyed by
example (``pacbound.posterior.streams``), so the counts must be equal; a whole isotropic
Gaussian certificate (``certify_gaussian``: σ search, KL, Monte-Carlo risk, bound) is also
run in both settings and its ``results`` blocks compared as JSON. Prints one JSON object:
throughput of each setting (examples per second), the speed-ups and whether the counts and
the results blocks are identical.

Run: ``.venv/bin/python benchmarks/bench_distributed.py [--model resnet] [--n 2048]``
(``--device cuda`` runs each rank on ``cuda:rank`` with nccl.) The model is the factory's
random initialisation: throughput and equality do not depend on training.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from typing import Any

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _inputs(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from pacbound.models import BUILTINS

    torch.manual_seed(args.seed)
    model = BUILTINS[args.model].factory().eval()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (args.n,), generator=gen)
    return model, x, y


def _timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if dist.is_initialized():
        dist.barrier()
    return out, time.perf_counter() - start


def _measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Counts and seconds of one setting (this process's world)."""
    from pacbound.certify.gaussian import certify_gaussian
    from pacbound.certify.gaussian_options import GaussianOptions
    from pacbound.posterior.network import auto_sampler, build_stochastic_network
    from pacbound.posterior.normalization import to_channel_affine
    from pacbound.posterior.priors import PriorMean, ScaleGrid
    from pacbound.posterior.risk import count_errors, count_stochastic_errors
    from pacbound.posterior.streams import DrawStream

    model, x, y = _inputs(args)
    affine = to_channel_affine(model).to(device)
    network = build_stochastic_network(
        affine, sampler=auto_sampler(affine, x[:8].to(device)), log_sigma_init=-4.0
    ).to(device)
    bs = args.batch_size

    def monte_carlo() -> Any:
        stream = DrawStream(args.seed, "monte_carlo")
        return count_stochastic_errors(
            network, x, y, passes=args.passes, stream=stream, batch_size=bs, device=device
        )

    monte_carlo()  # warm-up (allocations, first calls)
    mc, mc_seconds = _timed(monte_carlo, device)
    det, det_seconds = _timed(
        lambda: count_errors(model.to(device), x, y, batch_size=bs, device=device), device
    )
    options = GaussianOptions(
        prior=PriorMean.ZERO,
        prior_scales=ScaleGrid.log_spaced(1e-3, 1.0, 61),
        mc_passes=1,
        search_examples=args.search_examples,
        batch_size=bs,
        seed=args.seed,
    )
    n = args.certify_n
    cert, certify_seconds = _timed(
        lambda: certify_gaussian(model, x[:n], y[:n], options=options, device=device), device
    )
    return {
        "monte_carlo": {"errors": mc.errors, "evaluations": mc.evaluations},
        "monte_carlo_seconds": mc_seconds,
        "error_count": {"errors": det.errors, "evaluations": det.evaluations},
        "error_count_seconds": det_seconds,
        "certify_seconds": certify_seconds,
        "results": json.loads(json.dumps(cert.to_dict(), allow_nan=False)),
    }


def _worker(rank: int, world_size: int, port: int, args: argparse.Namespace, queue: Any) -> None:
    from pacbound import parallel

    torch.set_num_threads(1)
    device = torch.device(args.device)
    if world_size > 1:
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        if device.type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        parallel.init_from_environment(device)
    try:
        measured = _measure(args, device)
        seconds = parallel.all_gather_objects(
            {k: v for k, v in measured.items() if k.endswith("_seconds")}
        )
        if rank == 0:
            slowest = {k: max(s[k] for s in seconds) for k in seconds[0]}
            queue.put({**measured, **slowest, "world": parallel.current().to_dict()})
    finally:
        parallel.shutdown()


def _run(world_size: int, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(world_size, _free_port(), args, queue), nprocs=world_size)
    result: dict[str, Any] = queue.get()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet", help="a built-in architecture (--arch)")
    p.add_argument("--n", type=int, default=2048, help="examples counted")
    p.add_argument("--passes", type=int, default=1, help="Monte-Carlo passes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--certify-n", type=int, default=512, help="examples of the certify run")
    p.add_argument("--search-examples", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    one = _run(1, args)
    many = _run(args.processes, args)
    evaluated = args.n * args.passes

    def throughput(run: dict[str, Any]) -> dict[str, float]:
        return {
            "monte_carlo_examples_per_second": evaluated / run["monte_carlo_seconds"],
            "error_count_examples_per_second": args.n / run["error_count_seconds"],
            "certify_seconds": run["certify_seconds"],
        }

    out = {
        "benchmark": "bench_distributed",
        "model": args.model,
        "n": args.n,
        "passes": args.passes,
        "batch_size": args.batch_size,
        "device": args.device,
        "threads_per_process": 1,
        "one_process": throughput(one),
        f"{args.processes}_processes": throughput(many),
        "speedup": {
            "monte_carlo": one["monte_carlo_seconds"] / many["monte_carlo_seconds"],
            "error_count": one["error_count_seconds"] / many["error_count_seconds"],
            "certify": one["certify_seconds"] / many["certify_seconds"],
        },
        "counts": {"one_process": one["monte_carlo"], "processes": many["monte_carlo"]},
        "counts_identical": one["monte_carlo"] == many["monte_carlo"]
        and one["error_count"] == many["error_count"],
        "results_identical": json.dumps(one["results"], sort_keys=True)
        == json.dumps(many["results"], sort_keys=True),
        "world": many["world"],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(out, indent=2, allow_nan=False))


if __name__ == "__main__":
    main()

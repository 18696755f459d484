"""Run a function on every rank of a real gloo process group of W local processes.

Each rank is a fresh process (``torch.multiprocessing`` spawn) with torchrun's variables set
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` on a free localhost
port), joins through :func:`pacbound.parallel.init_from_environment` (the module-level world
becomes that rank's), runs ``fn(*args)`` at one thread, and hands its return value back.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

#: Seconds a rank waits in a collective before failing (a broken test must not hang).
COLLECTIVE_TIMEOUT = "120"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rank_main(
    rank: int, world_size: int, port: int, out: str, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PACBOUND_DIST_TIMEOUT=COLLECTIVE_TIMEOUT,
    )
    torch.set_num_threads(1)
    from pacbound.parallel import current, init_from_environment, shutdown

    init_from_environment(torch.device("cpu"))
    try:
        world = current()
        assert world.distributed and world.rank == rank and world.world_size == world_size
        result = fn(*args)
    finally:
        shutdown()
    Path(out, f"{rank}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(world_size: int, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """``fn(*args)`` on each of ``world_size`` ranks of a gloo group; the results in rank
    order. ``fn`` must be a module-level function (it is pickled into the new processes)."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(
            _rank_main,
            args=(world_size, free_port(), out, fn, args),
            nprocs=world_size,
            join=True,
        )
        return [pickle.loads(Path(out, f"{r}.pkl").read_bytes()) for r in range(world_size)]

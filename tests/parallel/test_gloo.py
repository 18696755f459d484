"""Real collectives: two processes joined by gloo, as torchrun would start them.

Each test spawns two workers with torchrun's environment variables set by hand and gathers
what every rank saw through a queue (one thread each, well under a minute).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from pacbound.errors import EXIT_BAD_INPUT, EXIT_NUMERICAL, EXIT_TERMINATED

WORKER_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, size: int, port: int, scenario: str, env: dict[str, str], out: Any) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(size),
            "LOCAL_WORLD_SIZE": str(size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "TORCHELASTIC_RUN_ID": "test",
            **env,
        }
    )
    torch.set_num_threads(1)
    from pacbound.parallel import init_from_environment, shutdown

    world = init_from_environment(torch.device("cpu"))
    try:
        out.put((rank, SCENARIOS[scenario](world)))
    finally:
        shutdown()


def _outcome(step: Callable[[], Any]) -> Any:
    """What a step returned, or (error type, exit code, message) for a pacbound error."""
    from pacbound.errors import PacboundError

    try:
        return step()
    except PacboundError as exc:
        return (type(exc).__name__, exc.exit_code, str(exc))


def _basics(world: Any) -> dict[str, Any]:
    from pacbound.errors import InvalidInputError, NumericalError
    from pacbound.parallel import (
        agree,
        agree_all,
        all_gather_objects,
        all_reduce_mean_,
        collectively,
        on_writer,
        shard,
        sum_ints,
    )

    grad = torch.tensor([float(world.rank), 10.0])
    all_reduce_mean_([grad])

    def fails_on_rank_1() -> int:
        if world.rank == 1:
            raise InvalidInputError("--data: bad shard")
        return 7

    def writer_fails() -> None:
        raise NumericalError("NaN while writing")

    return {
        "world": world.to_dict(),
        "sum": sum_ints([world.rank + 1, 10 * world.rank]),
        "gather": all_gather_objects(f"r{world.rank}"),
        "agree_same": _outcome(lambda: agree("the data", "abc")),
        "agree_differs": _outcome(lambda: agree_all({"ok": "1", "data": f"h{world.rank}"})),
        "collectively": _outcome(lambda: collectively(fails_on_rank_1)),
        "collectively_ok": _outcome(lambda: collectively(lambda: world.rank)),
        "on_writer": _outcome(lambda: on_writer(writer_fails)),
        "mean": grad.tolist(),
        "shard": list(shard(5)),
    }


def _peer_dies(world: Any) -> Any:
    from pacbound.parallel import sum_ints

    if world.rank == 1:
        os._exit(3)  # like a crash or SIGKILL: no goodbye
    start = time.monotonic()
    return _outcome(lambda: sum_ints([1])), time.monotonic() - start


def _peer_stuck(world: Any) -> Any:
    from pacbound.parallel import sum_ints

    if world.rank == 1:
        time.sleep(8)
        return "slept"
    start = time.monotonic()
    return _outcome(lambda: sum_ints([1])), time.monotonic() - start


SCENARIOS: dict[str, Callable[[Any], Any]] = {
    "basics": _basics,
    "peer_dies": _peer_dies,
    "peer_stuck": _peer_stuck,
}


def run_two(scenario: str, env: dict[str, str] | None = None) -> dict[int, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, 2, port, scenario, env or {}, out)) for r in (0, 1)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        while len(results) < 2 and time.monotonic() < deadline:
            try:
                rank, value = out.get(timeout=0.2)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and out.empty():
                    break
                continue
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=WORKER_TIMEOUT_S)
            if p.is_alive():
                p.kill()
    return results


def test_two_processes_collectives() -> None:
    results = run_two("basics")
    assert set(results) == {0, 1}
    for rank, r in results.items():
        assert r["world"] == {
            "rank": rank,
            "world_size": 2,
            "local_rank": rank,
            "backend": "gloo",
            "launcher": "torchrun",
        }
        assert r["sum"] == (3, 10)
        assert r["gather"] == ["r0", "r1"]
        assert r["agree_same"] is None
        # every rank refuses alike, naming the first rank that differs
        assert r["agree_differs"] == (
            "SharedError",
            EXIT_BAD_INPUT,
            "data differs between ranks: rank 1 has 'h1', rank 0 has 'h0'; every rank must "
            "read the same input",
        )
        assert r["collectively"] == (
            "SharedError",
            EXIT_BAD_INPUT,
            "--data: bad shard [rank 1 of 2]",
        )
        assert r["collectively_ok"] == rank
        assert r["on_writer"] == ("SharedError", EXIT_NUMERICAL, "NaN while writing")
        assert r["mean"] == [0.5, 10.0]
    assert results[0]["shard"] == [0, 1, 2] and results[1]["shard"] == [3, 4]


def test_a_dead_peer_ends_the_collective_promptly() -> None:
    results = run_two("peer_dies")
    assert set(results) == {0}  # rank 1 died without a word
    (name, code, message), seconds = results[0]
    assert (name, code) == ("PeerFailedError", EXIT_TERMINATED)
    assert message.startswith("rank 0 stopped during a sum of counts: another rank failed")
    assert seconds < 30


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_stuck_peer_ends_at_the_timeout() -> None:
    results = run_two("peer_stuck", {"PACBOUND_DIST_TIMEOUT": "2"})
    (name, code, message), seconds = results[0]
    assert (name, code) == ("PeerFailedError", EXIT_TERMINATED)
    assert "another rank failed, was killed or timed out" in message
    assert 1.5 < seconds < 7  # the 2 s timeout, not rank 1's 8 s nap
    assert results[1] == "slept"

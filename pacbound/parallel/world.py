"""Which process this is: rank, world size, backend and device, from torchrun's environment."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pacbound.errors import InvalidInputError
from pacbound.parallel.failures import PeerFailedError

#: Environment variables torchrun (torch.distributed.elastic) sets for every worker.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: Set by torchrun's agent only (a hand-made ``env://`` launch has the variables above only).
TORCHELASTIC_VARIABLE = "TORCHELASTIC_RUN_ID"

#: Seconds a rank waits in one collective (or to join) before giving up, from this variable.
TIMEOUT_VARIABLE = "PACBOUND_DIST_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class World:
    """This process's place in the run. ``backend`` is ``None`` for a plain one-process run
    (no process group); ``launcher`` is ``"torchrun"`` when started by it, ``"env"`` for
    another launcher that sets torchrun's variables, else ``"none"``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    launcher: str = "none"

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes reports, posteriors, artifacts and summaries."""
        return self.rank == 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_CURRENT = World()


def current() -> World:
    """The world of this process (one process until :func:`init_from_environment`)."""
    return _CURRENT


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def environment_rank() -> int:
    """This process's rank as the launcher set it (0 for a plain run), readable before the
    process group exists (e.g. to print a command-line error once, on rank 0 only)."""
    try:
        return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0
    except ValueError:
        return 0


def timeout_seconds() -> float:
    """The collective timeout: ``PACBOUND_DIST_TIMEOUT`` seconds, default 1800 (30 min)."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e9:
        raise InvalidInputError(
            f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds in (0, 1e9); set it to, "
            "e.g., 600, or unset it for the default of 1800",
            param=TIMEOUT_VARIABLE,
        )
    return value


def init_from_environment(device: torch.device) -> World:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA, with
    :func:`timeout_seconds` per collective) and make it :func:`current`; a plain run stays
    the one-process world. On CUDA, ``device`` becomes this process's current device."""
    global _CURRENT
    if not launched_by_torchrun():
        _CURRENT = World()
        return _CURRENT
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timeout_seconds()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError, OSError) as exc:  # DistStoreError is a RuntimeError
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            raise PeerFailedError(
                f"rank {os.environ['RANK']} could not join the process group ({backend}) at "
                f"{where} within {timeout:g} s ({' '.join(str(exc).split())[:200]}); check "
                "that every node was started and can reach the rendezvous address"
            ) from None
    launcher = "torchrun" if TORCHELASTIC_VARIABLE in os.environ else "env"
    _CURRENT = World(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ["LOCAL_RANK"]),
        backend=backend,
        launcher=launcher,
    )
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (if any); the world becomes one process again. Called on
    every way out, errors included: a process that keeps its group may hang at exit."""
    global _CURRENT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = World()

"""Which process this is: rank, world size, backend and device, from torchrun's environment."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

#: Environment variables torchrun (torch.distributed.elastic) sets for every worker.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place in the run. ``backend`` is ``None`` for a plain one-process run
    (no process group); ``launcher`` is ``"torchrun"`` when started by it, else ``"none"``."""

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


def init_from_environment(device: torch.device) -> World:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA) and make it
    :func:`current`; a plain run stays the one-process world."""
    global _CURRENT
    if not launched_by_torchrun():
        _CURRENT = World()
        return _CURRENT
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _CURRENT = World(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ["LOCAL_RANK"]),
        backend=backend,
        launcher="torchrun",
    )
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (if any); the world becomes one process again."""
    global _CURRENT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = World()

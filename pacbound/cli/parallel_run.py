"""A command under torchrun: join the process group, agree on the inputs, record the world.

A plain run goes through the same calls as the world-size-1 case (no process group: every
step below is then a no-op or the identity). Under ``torchrun`` every rank runs the whole
command; the work inside is sharded by the library, and only rank 0 writes or prints
(:func:`pacbound.parallel.on_writer`, ``Terminal(mute=...)``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pacbound._version import __version__
from pacbound.certify.method import RunInputs
from pacbound.errors import EXIT_BAD_INPUT, UsageError
from pacbound.parallel import (
    SharedError,
    World,
    agree_all,
    all_gather_objects,
    collectively,
    current,
    init_from_environment,
    launched_by_torchrun,
)


def rank_device(requested: str | None) -> torch.device:
    """This rank's device: ``--device`` as in a plain run, except that under torchrun
    ``cuda`` (given, or chosen because CUDA is there) means ``cuda:LOCAL_RANK``, one GPU per
    rank. An explicit ``cuda:N`` is kept only when the node runs one process."""
    from pacbound.io import resolve_device

    device = resolve_device(requested)
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    if device.index is None:
        return resolve_device(f"cuda:{os.environ['LOCAL_RANK']}")
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        raise UsageError(
            f"--device {requested}: under torchrun with several processes per node each rank "
            "uses cuda:LOCAL_RANK; give --device cuda",
            param="--device",
        )
    return device


def join_world(kw: dict[str, Any]) -> World:
    """Join torchrun's process group (a plain run: nothing happens). Under torchrun the
    command's ``device`` parameter becomes this rank's device (:func:`rank_device`)."""
    if not launched_by_torchrun():
        return current()
    device = rank_device(kw.get("device"))
    kw["device"] = str(device)
    return init_from_environment(device)


def run_environment(device: torch.device | str) -> dict[str, Any]:
    """The report's record of the run's processes: world size, backend, launcher and every
    rank's device (a collective: every rank calls it)."""
    world = current()
    return {
        "world_size": world.world_size,
        "backend": world.backend,
        "launcher": world.launcher,
        "rank_devices": [str(d) for d in all_gather_objects(str(device))],
    }


def _file_digests(records: Mapping[str, Any]) -> dict[str, str]:
    """sha256 of every input file in a command's ``inputs`` records, by a readable name."""
    digests: dict[str, str] = {}
    model = records.get("model")
    if model is not None:
        checkpoint = model["provenance"]["checkpoint"]
        digests[f"the checkpoint {checkpoint['path']} (sha256)"] = checkpoint["sha256"]
    for key in ("data", "heldout", "unlabeled"):
        for record in (records.get(key) or {}).get("files", []):
            digests[f"the {key} file {record['path']} (sha256)"] = record["sha256"]
    return digests


def agree_on_inputs(
    records: Mapping[str, Any], files: Mapping[str, str | Path | None] | None = None
) -> None:
    """Refuse (exit 3 on every rank, naming the first rank that differs) unless every rank
    runs the same command line and versions on files with the same sha256: the recorded
    inputs and ``files`` (option name ↦ path: ``--init``, a posterior, an artifact)."""
    if not current().distributed:
        return
    from pacbound.io import sha256_file

    digests = {
        "the command line": json.dumps(sys.argv[1:]),
        "the pacbound and torch versions": f"pacbound {__version__}, torch {torch.__version__}",
        **_file_digests(records),
    }
    for option, path in (files or {}).items():
        if path is not None:
            try:
                digests[f"{option} {path} (sha256)"] = sha256_file(path)
            except OSError as exc:
                digests[f"{option} {path} (sha256)"] = f"(unreadable: {exc.strerror})"
    agree_all(digests)


def input_sizes(inputs: RunInputs) -> dict[str, int]:
    """The number of examples of each data set of a run, by its option."""
    sizes = {"--data": inputs.data.n}
    if inputs.heldout is not None:
        sizes["--heldout"] = inputs.heldout.n
    if inputs.unlabeled is not None:
        sizes["--unlabeled"] = inputs.unlabeled.n
    return sizes


def check_world_size(sizes: Mapping[str, int]) -> None:
    """Refuse (exit 3, one line) a world larger than a data set (option ↦ n): a rank would
    get no example. Nothing to check in a plain run."""
    world = current()
    if not world.distributed:
        return
    for option, n in sizes.items():
        if world.world_size > n:
            raise SharedError(
                f"the world size {world.world_size} is larger than {option} (n = {n}): every "
                f"rank needs at least one example; start at most {n} processes in all",
                exit_code=EXIT_BAD_INPUT,
                param=option,
            )


def agree_on_report(document: Mapping[str, Any], report: Path, root: Path) -> None:
    """``verify REPORT`` under torchrun: every rank reads the same report and finds every
    input file it records with the recorded sha256 (else exit 3 everywhere, naming the file
    and the rank), and the world is no larger than the recorded data sets."""
    if not current().distributed:
        return
    from pacbound.verify.recorded import check_input_files

    agree_on_inputs({}, {"REPORT": report})
    collectively(lambda: check_input_files(document, root))
    inputs = document["inputs"]
    check_world_size(
        {
            f"the report's {key} set": inputs[key]["n"]
            for key in ("data", "heldout")
            if key in inputs
        }
    )

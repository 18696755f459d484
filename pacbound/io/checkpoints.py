"""Reading checkpoints: safetensors, weights-only ``torch.load`` and ``torch.export`` programs.

Nothing here executes code from a file unless the caller passes ``unsafe_allow_pickle=True``
(the CLI's ``--unsafe-allow-pickle``). Every tensor read is checked to be finite.

Tensor names can lose a prefix (``strip_prefix``, the CLI's ``--strip-prefix``): a Lightning
checkpoint nests ``model.fc.weight`` under ``"state_dict"``; stripping ``model.`` gives the
names of the bare network. A DataParallel ``module.`` prefix on every name is stripped
without asking.
"""

from __future__ import annotations

import os
import pickle
import re
import types
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from pacbound.errors import InvalidInputError, UsageError
from pacbound.io.provenance import CheckpointProvenance, FileRecord, check_file

#: Keys under which training scripts commonly nest the state dict, tried in this order.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights")
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_DATA_PARALLEL_PREFIX = "module."
_FINITE_CHUNK = 1 << 20  # elements per chunk when scanning for NaN/Inf
#: The class a weights-only load refused, in torch's message.
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]{1,120})")


class CheckpointFormat(str, Enum):
    SAFETENSORS = "safetensors"
    TORCH = "torch"  # a torch.save state dict (.pt/.pth), read weights-only
    EXPORT = "pt2"  # a torch.export program, self-contained


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """The tensors of a checkpoint by name; for a ``.pt2`` file the program itself
    (``program``), for a fully unpickled ``torch.save(model)`` the model (``module``)."""

    tensors: dict[str, Tensor]
    provenance: CheckpointProvenance
    program: nn.Module | None = None
    module: nn.Module | None = None


def checkpoint_format(path: Path, option: str = "CHECKPOINT") -> CheckpointFormat:
    """The format implied by the file name; an unknown suffix lists the accepted ones."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return CheckpointFormat.SAFETENSORS
    if suffix == ".pt2":
        return CheckpointFormat.EXPORT
    if suffix in _PICKLE_SUFFIXES:
        return CheckpointFormat.TORCH
    raise InvalidInputError(
        f"{option}: cannot tell the format of {path} from its suffix {suffix or '(none)'!r}; "
        "use .safetensors (preferred), .pt/.pth (a state dict) or .pt2 (torch.export)",
        param=option,
    )


def read_checkpoint(
    path: str | os.PathLike[str],
    *,
    unsafe_allow_pickle: bool = False,
    option: str = "CHECKPOINT",
    strip_prefix: str | None = None,
) -> Checkpoint:
    """Read every tensor of a checkpoint, refusing corrupt files and non-finite values.

    ``strip_prefix`` is removed from every name that starts with it; for the CHECKPOINT
    itself at least one name must (a typo would otherwise go unnoticed), an ``--init`` file
    saved without the prefix is read as it is.
    """
    file = check_file(path, option)
    fmt = checkpoint_format(file, option)
    if strip_prefix is not None and fmt is CheckpointFormat.EXPORT:
        raise UsageError(
            f"{option} {file} is a torch.export program whose tensor names are fixed: drop "
            "--strip-prefix",
            param="--strip-prefix",
        )
    record = FileRecord.of(file)
    if fmt is CheckpointFormat.SAFETENSORS:
        tensors = _read_safetensors(file, option)
        tensors, prefix = _strip_names(tensors, strip_prefix, file, option)
        provenance = CheckpointProvenance(record, fmt.value, stripped_prefix=prefix)
        checkpoint = Checkpoint(tensors, provenance)
    elif fmt is CheckpointFormat.EXPORT:
        checkpoint = _read_export(file, record, option)
    else:
        checkpoint = _read_torch(file, record, unsafe_allow_pickle, option, strip_prefix)
    check_finite(checkpoint.tensors, f"{option} {file}")
    return checkpoint


def _strip_names(
    tensors: dict[str, Tensor], prefix: str | None, file: Path, option: str
) -> tuple[dict[str, Tensor], str | None]:
    """``tensors`` without ``prefix`` (explicit) or without a DataParallel ``module.`` on
    every name, and the prefix actually removed."""
    if prefix is None or not any(name.startswith(prefix) for name in tensors):
        if prefix is not None and option == "CHECKPOINT":
            example = next(iter(tensors), "")
            raise InvalidInputError(
                f"{option} {file}: --strip-prefix {prefix!r} starts none of its tensor names "
                f"(e.g. {example!r}); run 'pacbound inspect {file}' to see them",
                param="--strip-prefix",
            )
        return _strip_data_parallel(tensors)
    cut = len(prefix)
    return {n[cut:] if n.startswith(prefix) else n: t for n, t in tensors.items()}, prefix


def check_finite(tensors: Mapping[str, Tensor], source: str) -> None:
    """Refuse NaN or ±Inf in any floating tensor, naming the first tensor that has one."""
    for name, tensor in tensors.items():
        bad = count_non_finite(tensor)
        if bad:
            raise InvalidInputError(
                f"{source}: tensor {name!r} has {bad} NaN/Inf value(s); the weights are "
                "corrupt or training diverged: use an earlier checkpoint"
            )


def count_non_finite(tensor: Tensor) -> int:
    """How many NaN/±Inf entries ``tensor`` has, without a full-size temporary.

    A finite sum implies finite terms (NaN and ±Inf propagate), so the usual case costs one
    reduction; only a non-finite sum (bad values, or overflow) is scanned chunk by chunk.
    """
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return 0
    if bool(torch.isfinite(tensor.sum())):
        return 0
    flat = tensor.reshape(-1)
    return sum(int((~torch.isfinite(chunk)).sum()) for chunk in flat.split(_FINITE_CHUNK))


def _read_safetensors(file: Path, option: str) -> dict[str, Tensor]:
    # safe_open maps the file; get_tensor returns tensors backed by that mapping, so a large
    # checkpoint is not held twice in memory.
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError
        raise InvalidInputError(
            f"{option}: {file} is not a valid safetensors file ({_first_line(exc)}); it may be "
            "truncated or not a safetensors file at all: re-save it with "
            "safetensors.torch.save_file",
            param=option,
        ) from None


def _read_torch(
    file: Path, record: FileRecord, unsafe_allow_pickle: bool, option: str, strip: str | None
) -> Checkpoint:
    mmap = zipfile.is_zipfile(file)
    unpickled = False
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if not str(exc).startswith("Weights only load failed") or not _looks_pickled(file, mmap):
            raise _corrupt(file, exc, option) from None
        if not unsafe_allow_pickle:
            found = _UNSUPPORTED_GLOBAL.search(str(exc))
            needs = f" (e.g. {found.group(1)})" if found else ""
            raise InvalidInputError(
                f"{option}: {file} holds Python objects{needs} that only a full unpickling can "
                "rebuild, and unpickling can run arbitrary code. Re-save the weights as "
                "safetensors or as a plain state dict (torch.save(model.state_dict(), …)); "
                "only for a file you trust, pass --unsafe-allow-pickle",
                param=option,
            ) from None
        unpickled = True
        try:
            obj = torch.load(file, map_location="cpu", weights_only=False)
        except Exception as inner:  # unpickling arbitrary objects can raise anything
            raise _corrupt(file, inner, option) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError… on bad bytes
        raise _corrupt(file, exc, option) from None
    tensors, key = _find_state_dict(obj, file, option)
    tensors, prefix = _strip_names(tensors, strip, file, option)
    module = obj if isinstance(obj, nn.Module) else None
    if module is None and key is not None and isinstance(obj[key], nn.Module):
        module = obj[key]
    provenance = CheckpointProvenance(
        record,
        CheckpointFormat.TORCH.value,
        nested_key=key,
        stripped_prefix=prefix,
        unsafe_pickle=unpickled,
    )
    return Checkpoint(tensors, provenance, module=module)


def _read_export(file: Path, record: FileRecord, option: str) -> Checkpoint:
    try:
        program = torch.export.load(file)
    except Exception as exc:  # torch.export raises many types on a bad archive
        raise InvalidInputError(
            f"{option}: {file} is not a loadable torch.export program ({_first_line(exc)}); "
            "save it with torch.export.save(torch.export.export(model, args), path)",
            param=option,
        ) from None
    check_program(program, f"{option} {file}")
    module = program_module(program)
    tensors = dict(module.state_dict())
    provenance = CheckpointProvenance(record, CheckpointFormat.EXPORT.value)
    return Checkpoint(tensors, provenance, program=module)


_EXPORT_HOW = (
    "export model.eval() with a dynamic batch size: torch.export.export(model.eval(), (x,), "
    "dynamic_shapes=({0: torch.export.Dim('batch')},))"
)


def check_program(program: torch.export.ExportedProgram, source: str) -> None:
    """Refuse a program whose predictions are not a fixed function of one example: exported
    in training mode (dropout, BatchNorm batch statistics, buffers it updates) or for a fixed
    batch size (pacbound evaluates batches of any size)."""
    training = sorted(set(_training_ops(program)))
    if training or program.graph_signature.buffers_to_mutate:
        what = ", ".join(training) or "it updates its buffers when called"
        raise InvalidInputError(
            f"{source} was exported in training mode ({what}); {_EXPORT_HOW}",
            param="CHECKPOINT",
        )
    user_inputs = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind is torch.export.graph_signature.InputKind.USER_INPUT
    ]
    shapes = {
        node.name: getattr(node.meta.get("val"), "shape", None)
        for node in program.graph.nodes
        if node.op == "placeholder"
    }
    first = shapes.get(user_inputs[0]) if len(user_inputs) == 1 else None
    if first is None or len(first) == 0:
        raise InvalidInputError(
            f"{source} takes {len(user_inputs)} inputs; pacbound evaluates programs that take "
            f"one batch of examples: {_EXPORT_HOW}",
            param="CHECKPOINT",
        )
    if isinstance(first[0], int):
        raise InvalidInputError(
            f"{source} was exported for a fixed batch size of {first[0]}; {_EXPORT_HOW}",
            param="CHECKPOINT",
        )


def _training_ops(program: torch.export.ExportedProgram) -> list[str]:
    """Dropout and BatchNorm calls of the graph whose train/training flag is set."""
    found = []
    for node in program.graph.nodes:
        name = str(node.target)
        if node.op != "call_function" or not ("dropout" in name or "batch_norm" in name):
            continue
        flags = [a for a in node.args if isinstance(a, bool)]
        flags += [v for k, v in node.kwargs.items() if k in ("train", "training")]
        if flags and flags[0] is True:
            found.append(name.removeprefix("aten.").split(".")[0])
    return found


def program_module(program: torch.export.ExportedProgram) -> nn.Module:
    """``program.module()`` whose ``train()``/``eval()`` keep the mode fixed at export.

    torch makes both raise, because they cannot change an exported graph; :func:`check_program`
    has refused training-mode graphs, so an eval-mode request is already satisfied.
    """
    module = program.module()

    def fixed_mode(self: nn.Module, mode: bool = True) -> nn.Module:
        return self

    module.train = types.MethodType(fixed_mode, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(fixed_mode, module)  # type: ignore[method-assign]
    return module


def _find_state_dict(obj: Any, file: Path, option: str) -> tuple[dict[str, Tensor], str | None]:
    if isinstance(obj, nn.Module):  # only reachable through the unsafe path
        return dict(obj.state_dict()), None
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}, None
        for key in NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict()), key
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, Tensor) for v in inner.values())
            ):
                return {str(k): v for k, v in inner.items()}, key
        keys = ", ".join(repr(str(k)) for k in list(obj)[:10]) or "none"
        raise InvalidInputError(
            f"{option}: {file} holds a dict without a state dict of tensors (top-level keys: "
            f"{keys}); save model.state_dict(), or nest it under one of "
            f"{', '.join(NESTED_KEYS)}",
            param=option,
        )
    raise InvalidInputError(
        f"{option}: {file} holds a {type(obj).__name__}, not a state dict; save "
        "model.state_dict() instead",
        param=option,
    )


def _strip_data_parallel(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
    if tensors and all(name.startswith(_DATA_PARALLEL_PREFIX) for name in tensors):
        cut = len(_DATA_PARALLEL_PREFIX)
        return {name[cut:]: t for name, t in tensors.items()}, _DATA_PARALLEL_PREFIX
    return tensors, None


def _looks_pickled(file: Path, is_zip: bool) -> bool:
    """A torch zip archive, or a bare pickle (protocol ≥ 2 starts with the PROTO opcode)."""
    if is_zip:
        return True
    with open(file, "rb") as handle:
        return handle.read(1) == b"\x80"


def _corrupt(file: Path, exc: BaseException, option: str) -> InvalidInputError:
    return InvalidInputError(
        f"{option}: {file} is not a readable PyTorch checkpoint ({_first_line(exc)}); it may "
        "be truncated or corrupt: save it again with torch.save(model.state_dict(), path)",
        param=option,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {first[:160]}" if first else name


def with_tied_names(
    module: nn.Module, tensors: Mapping[str, Tensor], *, source: str
) -> dict[str, Tensor]:
    """``tensors`` completed with every name of a tensor the module shares (a tied weight):
    a file may hold such a tensor once (safetensors' ``save_model`` keeps one name), and the
    other names get it. Names of one shared tensor saved with different values are refused."""
    groups: dict[int, list[str]] = {}
    named = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in named:
        groups.setdefault(id(tensor), []).append(name)
    out = dict(tensors)
    for names in groups.values():
        saved = [name for name in names if name in tensors]
        if len(names) < 2 or not saved:
            continue
        first = tensors[saved[0]]
        for name in saved[1:]:
            other = tensors[name]
            if other.shape != first.shape or not torch.equal(other, first.to(other.dtype)):
                raise InvalidInputError(
                    f"{source}: {saved[0]} and {name} are one shared (tied) tensor of the "
                    "model but the file holds different values for them"
                )
        for name in names:
            out.setdefault(name, first)
    return out

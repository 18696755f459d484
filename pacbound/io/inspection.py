"""``pacbound inspect``'s view of a checkpoint: every tensor, totals, and whether it loads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from pacbound.errors import InvalidInputError
from pacbound.io.checkpoints import read_checkpoint
from pacbound.io.models import TensorInfo, TensorKind, load_model, program_options_error
from pacbound.io.provenance import CheckpointProvenance

#: Name endings of buffers, used to classify tensors when no architecture is given.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class CheckpointReport:
    """What ``pacbound inspect`` shows: every tensor, totals, and whether it loads.

    ``kinds_from`` says how parameters were told from buffers: ``"architecture"`` (exact) or
    ``"names"`` (by the usual BatchNorm buffer names, when no architecture was given).
    ``loads`` is ``None`` when there was nothing to load into. ``common_prefix`` is the
    dotted prefix every tensor name shares (``"model."`` in a Lightning checkpoint), the
    ``--strip-prefix`` the names probably need, or ``None``.
    """

    provenance: CheckpointProvenance
    tensors: tuple[TensorInfo, ...]
    kinds_from: str
    architecture: str | None
    loads: bool | None
    load_error: str | None = None

    @property
    def common_prefix(self) -> str | None:
        return common_prefix([t.name for t in self.tensors])

    @property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.tensors if t.kind is TensorKind.PARAMETER)

    @property
    def num_buffer_elements(self) -> int:
        return sum(t.numel for t in self.tensors if t.kind is TensorKind.BUFFER)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.provenance.to_dict(),
            "architecture": self.architecture,
            "loads": self.loads,
            "load_error": self.load_error,
            "kinds_from": self.kinds_from,
            "common_prefix": self.common_prefix,
            "num_parameters": self.num_parameters,
            "num_buffer_elements": self.num_buffer_elements,
            "num_parameter_tensors": sum(t.kind is TensorKind.PARAMETER for t in self.tensors),
            "num_buffer_tensors": sum(t.kind is TensorKind.BUFFER for t in self.tensors),
            "tensors": [t.to_dict() for t in self.tensors],
        }


def inspect_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    unsafe_allow_pickle: bool = False,
    strip_prefix: str | None = None,
) -> CheckpointReport:
    """Describe ``checkpoint`` and, given an architecture, try to load it strictly.

    A file that cannot be read raises; a file that reads but does not load into ``arch``
    (or, holding a whole pickled model, into itself) gives ``loads=False`` and the reason in
    ``load_error``.
    """
    ckpt = read_checkpoint(
        checkpoint, unsafe_allow_pickle=unsafe_allow_pickle, strip_prefix=strip_prefix
    )
    if ckpt.program is not None:
        program_params = {name for name, _ in ckpt.program.named_parameters()}
        infos = _infos(ckpt.tensors, {n: _kind(n in program_params) for n in ckpt.tensors})
        if arch is not None or arch_kwargs:
            raise program_options_error(checkpoint)
        return CheckpointReport(ckpt.provenance, infos, "architecture", None, True)
    by_name = {n: _kind(not n.endswith(BUFFER_SUFFIXES)) for n in ckpt.tensors}
    if arch is None and ckpt.module is None:
        return CheckpointReport(ckpt.provenance, _infos(ckpt.tensors, by_name), "names", None, None)
    try:
        model = load_model(
            checkpoint,
            arch=arch,
            arch_kwargs=arch_kwargs,
            unsafe_allow_pickle=unsafe_allow_pickle,
            strip_prefix=strip_prefix,
        )
    except InvalidInputError as exc:
        infos = _infos(ckpt.tensors, by_name)
        return CheckpointReport(ckpt.provenance, infos, "names", arch, False, str(exc))
    kinds = {t.name: t.kind for t in model.parameters + model.buffers}
    kinds.update({n: by_name[n] for n in ckpt.tensors if n not in kinds})
    infos = _infos(ckpt.tensors, kinds)
    return CheckpointReport(ckpt.provenance, infos, "architecture", arch, True)


def _kind(is_parameter: bool) -> TensorKind:
    return TensorKind.PARAMETER if is_parameter else TensorKind.BUFFER


def _infos(
    tensors: Mapping[str, Tensor], kinds: Mapping[str, TensorKind]
) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo.of(name, t, kinds[name]) for name, t in tensors.items())


def common_prefix(names: list[str]) -> str | None:
    """The dotted prefix that every name has before its own last components.

    >>> common_prefix(["model.net.0.weight", "model.net.0.bias", "model.head.weight"])
    'model.'
    >>> common_prefix(["0.weight", "1.weight"]) is None
    True
    """
    parts = [name.split(".")[:-1] for name in names]
    if not parts:
        return None
    shared = []
    for components in zip(*parts, strict=False):
        if len(set(components)) != 1:
            break
        shared.append(components[0])
    if any(len(p) <= len(shared) for p in parts):  # keep at least one component per name
        shared = shared[: min(len(p) for p in parts) - 1] if shared else []
    return ".".join(shared) + "." if shared else None

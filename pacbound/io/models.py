"""Loading a model: a checkpoint matched strictly into an architecture, with its provenance.

Matching is all-or-nothing: every missing, unexpected and wrongly shaped tensor is listed in
one error. Floating-point dtype changes are made explicitly and recorded; buffers (BatchNorm
running statistics, …) are reported apart from parameters because a bound must pay for them
(MATH.md §4).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError, UsageError
from pacbound.io.architectures import ArchitectureSpec, build_module, parse_arch
from pacbound.io.checkpoints import Checkpoint, read_checkpoint, with_tied_names
from pacbound.io.device import resolve_device
from pacbound.io.provenance import ModelProvenance
from pacbound.models import BUILTINS


class TensorKind(str, Enum):
    PARAMETER = "parameter"
    BUFFER = "buffer"


@dataclass(frozen=True)
class TensorInfo:
    """One named tensor: shape, dtype, element count and whether it is trained or a buffer."""

    name: str
    kind: TensorKind
    shape: tuple[int, ...]
    dtype: str
    numel: int

    @classmethod
    def of(cls, name: str, tensor: Tensor, kind: TensorKind) -> TensorInfo:
        dtype = str(tensor.dtype).removeprefix("torch.")
        return cls(name, kind, tuple(tensor.shape), dtype, tensor.numel())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "numel": self.numel,
        }


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to evaluate (eval mode, on ``device``), and what it was built from."""

    module: nn.Module
    parameters: tuple[TensorInfo, ...]
    buffers: tuple[TensorInfo, ...]
    provenance: ModelProvenance
    device: torch.device

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.parameters)

    @property
    def buffer_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.buffers)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.parameters)

    @property
    def num_buffer_elements(self) -> int:
        return sum(t.numel for t in self.buffers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_parameters": self.num_parameters,
            "num_buffer_elements": self.num_buffer_elements,
            "parameters": [t.to_dict() for t in self.parameters],
            "buffers": [t.to_dict() for t in self.buffers],
            "device": str(self.device),
            "provenance": self.provenance.to_dict(),
        }


def load_model(
    checkpoint: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    unsafe_allow_pickle: bool = False,
    device: str | torch.device | None = None,
    strip_prefix: str | None = None,
) -> LoadedModel:
    """Load ``checkpoint`` into ``arch``, strictly; a ``.pt2`` program, or a whole model
    saved with ``torch.save(model)`` (with ``unsafe_allow_pickle``), needs no ``arch``.

    ``strip_prefix`` is removed from the tensor names first (``--strip-prefix``). Raises
    :class:`~pacbound.errors.InvalidInputError` naming the file and the fix for a bad file,
    a bad architecture, or any mismatch between the two.
    """
    dev = resolve_device(device)
    ckpt = read_checkpoint(
        checkpoint, unsafe_allow_pickle=unsafe_allow_pickle, strip_prefix=strip_prefix
    )
    kwargs = dict(arch_kwargs or {})
    conversions: tuple[str, ...] = ()
    if ckpt.program is not None:
        if arch is not None or kwargs:
            raise program_options_error(checkpoint)
        module = ckpt.program
    elif arch is None and ckpt.module is not None:
        if kwargs or strip_prefix is not None:
            raise UsageError(
                f"CHECKPOINT {checkpoint} holds a whole model, which is its own architecture; "
                "drop --arch-kwargs and --strip-prefix (or name the architecture with --arch)",
                param="--arch-kwargs" if kwargs else "--strip-prefix",
            )
        module = ckpt.module
    else:
        if arch is None:
            raise InvalidInputError(
                f"CHECKPOINT {checkpoint} holds weights only: say which network they belong "
                f"to with --arch NAME ({', '.join(BUILTINS)}) or --arch package.module:factory",
                param="--arch",
            )
        module, conversions = _build_and_load(parse_arch(arch), kwargs, ckpt)
    module = module.to(dev)
    if ckpt.program is None:  # a torch.export program fixed its mode when it was exported
        module.eval()
    params, buffers = _describe(module)
    provenance = ModelProvenance(ckpt.provenance, arch, kwargs, conversions)
    return LoadedModel(module, params, buffers, provenance, dev)


def program_options_error(checkpoint: str | os.PathLike[str]) -> UsageError:
    """--arch or --arch-kwargs given for a .pt2 program, which brings its own graph."""
    return UsageError(
        f"CHECKPOINT {checkpoint} is a self-contained torch.export program; drop --arch and "
        "--arch-kwargs",
        param="--arch",
    )


def refuse_trained_init(
    init_state: Mapping[str, Tensor], model: LoadedModel | nn.Module, option: str = "--init"
) -> None:
    """Refuse initial weights identical to the checkpoint's parameters.

    An init prior centred at the trained weights (or a subspace around them) is fitted to the
    data while the bound treats it as fixed in advance: the certificate would be optimistic.
    Only exact equality can be caught; the init must be saved before training.
    """
    module = model.module if isinstance(model, LoadedModel) else model
    params = list(module.named_parameters())
    if params and all(
        name in init_state and torch.equal(init_state[name].to(p.device, p.dtype), p.detach())
        for name, p in params
    ):
        raise InvalidInputError(
            f"{option} holds exactly the checkpoint's trained weights; it must be the "
            "initialization saved BEFORE training (a prior or θ₀ fitted to the data would make "
            "the bound invalid)",
            param=option,
        )


#: An init within this relative L2 distance of the trained weights gets a loud warning.
NEAR_INIT_RELATIVE = 1e-2


def near_trained_init(
    init_state: Mapping[str, Tensor], model: LoadedModel | nn.Module, option: str = "--init"
) -> str | None:
    """A warning when the initial weights are nearly the checkpoint's (but not equal, which
    :func:`refuse_trained_init` refuses): within :data:`NEAR_INIT_RELATIVE` in relative L2
    distance, or with at least half of the parameter tensors identical. Only the user can
    know whether the file was saved before training; a nudged copy of the trained weights
    would make the certificate invalid."""
    module = model.module if isinstance(model, LoadedModel) else model
    diff = norm = 0.0
    max_abs = 0.0
    same = total = 0
    for name, p in module.named_parameters():
        if name not in init_state:
            continue
        a = p.detach().double()
        b = init_state[name].detach().to(p.device).double()
        d = a - b
        diff += float((d * d).sum())
        norm += float((a * a).sum())
        max_abs = max(max_abs, float(d.abs().max())) if d.numel() else max_abs
        same += bool(torch.equal(a, b))
        total += 1
    if total == 0:
        return None
    relative = (diff / norm) ** 0.5 if norm > 0 else float("inf")
    if relative >= NEAR_INIT_RELATIVE and 2 * same < total:
        return None
    return (
        f"{option} is nearly the checkpoint's trained weights: relative L2 distance "
        f"{relative:.3g}, largest change {max_abs:.3g}, {same}/{total} parameter tensors "
        "identical. It must be the initialization saved BEFORE training; a copy of the "
        "trained weights would make the certificate invalid"
    )


def load_init_state(
    path: str | os.PathLike[str],
    model: LoadedModel | nn.Module,
    *,
    unsafe_allow_pickle: bool = False,
) -> dict[str, Tensor]:
    """The initial weights in ``path`` (``--init``), checked to match ``model`` exactly.

    Returns every state-dict tensor by name, in the model's dtypes and on its device. For a
    :class:`LoadedModel`, the prefix stripped from its checkpoint's names (``--strip-prefix``)
    is stripped from the init file's names too, where they have it.
    """
    module = model.module if isinstance(model, LoadedModel) else model
    prefix = model.provenance.checkpoint.stripped_prefix if isinstance(model, LoadedModel) else None
    ckpt = read_checkpoint(
        path, unsafe_allow_pickle=unsafe_allow_pickle, option="--init", strip_prefix=prefix
    )
    expected = module.state_dict()
    source = f"--init {path}"
    tensors = with_tied_names(module, ckpt.tensors, source=source)
    converted, _ = match_state(expected, tensors, source=source, fix=_INIT_FIX)
    return {name: t.to(expected[name].device) for name, t in converted.items()}


def match_state(
    expected: Mapping[str, Tensor],
    tensors: Mapping[str, Tensor],
    *,
    source: str,
    fix: str,
) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """``tensors`` converted to ``expected``'s dtypes, or one error listing every mismatch.

    Returns the tensors and the conversions made, as ``"name: float16 -> float32"``.
    """
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    prefix = suggest_strip_prefix(expected, tensors) if missing else None
    if prefix is not None:
        example = next(n for n in expected if n in missing)
        how = (
            "re-save it under the checkpoint's names"
            if source.startswith("--init")
            else f"pass --strip-prefix {prefix}"
        )
        raise InvalidInputError(
            f"{source} does not match the model: its tensor names carry the prefix {prefix!r} "
            f"({prefix + example!r} for {example!r}); {how}",
            param="--strip-prefix",
        )
    problems = []
    if missing:
        problems.append("missing: " + _some(missing))
    if unexpected:
        problems.append("unexpected: " + _some(unexpected))
    wrong_shape, wrong_kind = [], []
    for name, want in expected.items():
        got = tensors.get(name)
        if got is None:
            continue
        if got.shape != want.shape:
            wrong_shape.append(f"{name} (file {list(got.shape)}, model {list(want.shape)})")
        elif got.is_floating_point() != want.is_floating_point():
            wrong_kind.append(f"{name} (file {got.dtype}, model {want.dtype})")
    if wrong_shape:
        problems.append("wrong shape: " + _some(wrong_shape, "; "))
    if wrong_kind:
        problems.append("incompatible dtype: " + _some(wrong_kind, "; "))
    if problems:
        raise InvalidInputError(f"{source} does not match the model: {'; '.join(problems)}. {fix}")
    converted, conversions = {}, []
    for name, want in expected.items():
        got = tensors[name]
        if got.dtype != want.dtype:
            conversions.append(f"{name}: {_dtype(got)} -> {_dtype(want)}")
            got = got.to(want.dtype)
        converted[name] = got
    return converted, tuple(conversions)


def suggest_strip_prefix(expected: Mapping[str, Any], tensors: Mapping[str, Any]) -> str | None:
    """The prefix whose removal from the file's names gives every name ``expected`` has
    (``"model."`` for a Lightning checkpoint), or ``None`` when no prefix does.

    >>> suggest_strip_prefix({"fc.weight": 0}, {"model.fc.weight": 0, "loss.w": 0})
    'model.'
    """
    if not expected:
        return None
    first = next(iter(expected))
    for name in tensors:
        if len(name) > len(first) and name.endswith("." + first):
            prefix = name[: -len(first)]
            if all(prefix + want in tensors for want in expected):
                return prefix
    return None


_LISTED = 6


def _some(names: list[str], sep: str = ", ") -> str:
    """At most a few names, and how many more: a mismatch message stays one short line."""
    more = f"{sep}… ({len(names) - _LISTED} more)" if len(names) > _LISTED else ""
    return sep.join(names[:_LISTED]) + more


_ARCH_FIX = "Check --arch and --arch-kwargs (layer sizes, num_classes) against the training code"
_INIT_FIX = "--init must come from the same architecture, saved before training"


def _build_and_load(
    spec: ArchitectureSpec, kwargs: Mapping[str, Any], ckpt: Checkpoint
) -> tuple[nn.Module, tuple[str, ...]]:
    source = f"CHECKPOINT {ckpt.provenance.file.path}"
    skeleton = _build_on_meta(spec, kwargs)
    if skeleton is None:
        module = build_module(spec, kwargs)
        tensors = with_tied_names(module, ckpt.tensors, source=source)
        converted, conversions = match_state(
            module.state_dict(), tensors, source=source, fix=_ARCH_FIX
        )
        module.load_state_dict(converted, strict=True)
        return module, conversions
    tensors = with_tied_names(skeleton, ckpt.tensors, source=source)
    converted, conversions = match_state(
        skeleton.state_dict(), tensors, source=source, fix=_ARCH_FIX
    )
    # assign=True adopts the checkpoint's tensors (memory-mapped for safetensors) as the
    # parameters instead of copying them into freshly initialised ones: one copy, not two.
    skeleton.load_state_dict(converted, strict=True, assign=True)
    return skeleton, conversions


def _build_on_meta(spec: ArchitectureSpec, kwargs: Mapping[str, Any]) -> nn.Module | None:
    """The architecture built without allocating weights, or ``None`` when that is unsafe."""
    try:
        with torch.device("meta"):
            skeleton = build_module(spec, kwargs)
    except InvalidInputError:
        return None  # let the ordinary build raise (or succeed) with the real error
    tied = len(list(skeleton.named_parameters(remove_duplicate=False))) != len(
        list(skeleton.named_parameters())
    )
    persistent = set(skeleton.state_dict())
    stray_meta = any(b.is_meta for name, b in skeleton.named_buffers() if name not in persistent)
    return None if tied or stray_meta else skeleton


def _describe(module: nn.Module) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    state = module.state_dict()
    param_names = {name for name, _ in module.named_parameters()}
    params = tuple(
        TensorInfo.of(n, t, TensorKind.PARAMETER) for n, t in state.items() if n in param_names
    )
    buffers = tuple(
        TensorInfo.of(n, t, TensorKind.BUFFER) for n, t in state.items() if n not in param_names
    )
    return params, buffers


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")

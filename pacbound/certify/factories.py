"""The model factory that encoder and decoder of the compression methods share, for any
loaded model (MATH.md §6).

* ``--arch`` models: the architecture rebuilt from ``--arch``/``--arch-kwargs``, with θ₀ from
  the seed or from an ``--init`` file (read with the checkpoint's ``--strip-prefix``).
* Models that are their own architecture (a ``.pt2`` program, or a whole model saved with
  ``torch.save(model)`` and read with ``--unsafe-allow-pickle``): a copy of the loaded model
  in which every parameter and buffer is replaced, so that of the trained file only the
  structure (graph or code) reaches the decoder, exactly like an ``--arch`` factory. θ₀ comes
  from ``--init``, or from the seed through the modules' own ``reset_parameters``; a parameter
  that no ``reset_parameters`` re-draws (every parameter of a ``.pt2`` program) is refused for
  subspace (θ₀ would be the trained weights) and zeroed for quantize, which codes every
  parameter and floating buffer in the message and never uses θ₀.
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.compressors import ModelFactory
from pacbound.errors import InvalidInputError
from pacbound.io import LoadedModel, load_init_state


def seeded_factory(build: Callable[[], nn.Module]) -> ModelFactory:
    """``seed ↦ build()`` run under ``torch.manual_seed(seed)`` with the global RNG restored.

    PyTorch's CPU initialisers are deterministic for a given seed and torch version, so the
    decoder regenerates θ₀ exactly (build on the CPU; move the model afterwards).
    """

    def factory(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build()

    return factory


@dataclass(frozen=True)
class InitFileFactory:
    """``seed ↦`` the architecture with θ₀ = the weights of an init file; the seed then only
    regenerates P.

    The file must be fixed before the data are seen (e.g. saved before training): the
    decoder needs it as side information that the code length does not pay for, exactly
    like the architecture. Its sha256 goes into the message's architecture fingerprint,
    so decoding with another (or no) init file is refused.
    """

    build: Callable[[], nn.Module]
    state: Mapping[str, Tensor]
    init_sha256: str

    def __call__(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.build()
        module.load_state_dict(dict(self.state), strict=True)
        return module


def theta0_sha256(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over θ₀'s content (names, dtypes, shapes and bytes in name order), so the
    same weights saved in another file format give the same hash."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return h.hexdigest()


def architecture_factory(
    arch: str,
    arch_kwargs: Mapping[str, Any] | None,
    *,
    init: str | Path | None = None,
    unsafe_allow_pickle: bool = False,
) -> ModelFactory:
    """The factory that encoder and decoder share: ``--arch``/``--arch-kwargs`` seeded by the
    message's seed, or with θ₀ from the ``init`` file (checked against the architecture)."""
    from pacbound.io.architectures import build_module, parse_arch

    spec = parse_arch(arch)
    kwargs = dict(arch_kwargs or {})

    def build() -> nn.Module:
        return build_module(spec, kwargs)

    if init is None:
        return seeded_factory(build)
    with torch.random.fork_rng(devices=[]):
        reference = build()
    state = load_init_state(init, reference, unsafe_allow_pickle=unsafe_allow_pickle)
    state = {k: v.detach().to("cpu") for k, v in state.items()}
    return InitFileFactory(build, state, theta0_sha256(state))


def factory_for(
    loaded: LoadedModel,
    method: str,
    *,
    init: str | os.PathLike[str] | None = None,
    unsafe_allow_pickle: bool = False,
) -> ModelFactory:
    """``seed ↦ fresh model`` for ``loaded``: the architecture it was loaded into, or, for a
    model that is its own architecture, a scrubbed copy of it (see the module docstring)."""
    prov = loaded.provenance
    if prov.architecture is not None:
        if init is None:
            return architecture_factory(prov.architecture, prov.arch_kwargs)
        from pacbound.io.architectures import build_module, parse_arch

        spec, kwargs = parse_arch(prov.architecture), dict(prov.arch_kwargs)
        return _init_factory(lambda: build_module(spec, kwargs), loaded, init, unsafe_allow_pickle)
    source = f"CHECKPOINT {prov.checkpoint.file.path}"
    # on the loaded model itself: copying a program's GraphModule turns its constants and
    # non-persistent buffers into ordinary buffers
    _refuse_hidden_tensors(loaded.module, source)
    template = copy_model(loaded.module).to("cpu")
    if init is not None:
        return _init_factory(lambda: copy_model(template), loaded, init, unsafe_allow_pickle)
    return ResetFactory(template, source, zero_unreset=method == "quantize")


def _init_factory(
    build: Callable[[], nn.Module],
    loaded: LoadedModel,
    init: str | os.PathLike[str],
    unsafe_allow_pickle: bool,
) -> InitFileFactory:
    state = load_init_state(init, loaded, unsafe_allow_pickle=unsafe_allow_pickle)
    state = {k: v.detach().to("cpu") for k, v in state.items()}
    return InitFileFactory(build, state, theta0_sha256(state))


def copy_model(module: nn.Module) -> nn.Module:
    """A deep copy; torch's own pytree code warns (FutureWarning) when it copies the
    GraphModule of a ``.pt2`` program, which is noise here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(module)


@dataclass(frozen=True, eq=False)
class ResetFactory:
    """``seed ↦`` a copy of ``template`` with every parameter and buffer re-drawn under the
    seed by the modules' ``reset_parameters``; with ``zero_unreset`` the tensors that no
    ``reset_parameters`` re-draws are zeroed, otherwise such parameters are refused.

    Every tensor is first overwritten with a sentinel (NaN, or the integer type's minimum), so
    a tensor still holding it after the resets was not re-drawn, whatever its trained value.
    """

    template: nn.Module
    source: str
    zero_unreset: bool

    def __call__(self, seed: int) -> nn.Module:
        fresh = seeded_factory(lambda: _reset(_poisoned(copy_model(self.template))))(seed)
        state = fresh.state_dict(keep_vars=True)
        kept = [name for name, t in state.items() if _poisoned_somewhere(t)]
        params = {name for name, _ in fresh.named_parameters()}
        if not self.zero_unreset and any(name in params for name in kept):
            shown = ", ".join(n for n in kept if n in params)
            raise InvalidInputError(
                f"{self.source}: no reset_parameters() re-draws {_short(shown)}, so θ₀ of the "
                "subspace cannot be made without the trained weights; pass --init PATH with the "
                "weights saved before training (or use --method quantize, which needs no θ₀)",
                param="--init",
            )
        with torch.no_grad():
            for name in kept:
                state[name].zero_()
        return fresh


def _poisoned(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for tensor in module.state_dict(keep_vars=True).values():
            if tensor.is_floating_point() or tensor.is_complex():
                tensor.fill_(float("nan"))
            elif tensor.dtype is not torch.bool:
                tensor.fill_(torch.iinfo(tensor.dtype).min)
    return module


def _poisoned_somewhere(tensor: Tensor) -> bool:
    if tensor.is_floating_point() or tensor.is_complex():
        return bool(torch.isnan(tensor).any())
    if tensor.dtype is torch.bool:
        return True  # no sentinel: treat as not re-drawn
    return bool((tensor == torch.iinfo(tensor.dtype).min).any())


def _reset(module: nn.Module) -> nn.Module:
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    return module


def _refuse_hidden_tensors(module: nn.Module, source: str) -> None:
    """Refuse tensors a fresh copy would keep from the trained file: plain tensor attributes
    (e.g. a program's lifted constants) and non-persistent buffers, which neither the message
    nor θ₀ replaces."""
    persistent = set(module.state_dict())
    hidden = [n for n, _ in module.named_buffers() if n not in persistent]
    for prefix, sub in module.named_modules():
        hidden += [
            f"{prefix}.{key}" if prefix else key
            for key, value in vars(sub).items()
            if isinstance(value, Tensor)
        ]
    if hidden:
        raise InvalidInputError(
            f"{source} holds tensors that are neither parameters nor saved buffers "
            f"({_short(', '.join(hidden))}); the decoder would take them from the trained "
            "file without paying for them: save model.state_dict() and pass --arch",
            param="CHECKPOINT",
        )


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class RunFactory:
    """The factory of a compression run, the ``--init`` record for the report and the
    warning about an init file near the trained weights (None when there is none)."""

    factory: ModelFactory
    init_record: dict[str, Any] | None
    warning: str | None


def run_factory(
    loaded: LoadedModel,
    method: str,
    *,
    seed: int,
    init: str | os.PathLike[str] | None = None,
    unsafe_allow_pickle: bool = False,
) -> RunFactory:
    """:func:`factory_for` with certify's checks, for ``certify`` and ``verify`` alike: θ₀
    from ``init`` must not be the trained weights. (Buffers the factory does not rebuild are
    coded in the message, :mod:`pacbound.compressors.buffers`; ``seed`` is kept for callers.)"""
    del seed
    from pacbound.io import sha256_file
    from pacbound.io.models import near_trained_init, refuse_trained_init

    factory = factory_for(loaded, method, init=init, unsafe_allow_pickle=unsafe_allow_pickle)
    record = warning = None
    if init is not None:
        assert isinstance(factory, InitFileFactory)
        refuse_trained_init(factory.state, loaded)
        warning = near_trained_init(factory.state, loaded)
        record = {
            "path": str(init),
            "sha256": sha256_file(init),
            "theta0_sha256": factory.init_sha256,
        }
    return RunFactory(factory, record, warning)

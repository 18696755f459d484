"""Static checks of a model before a posterior is built on it (MATH.md §4, §10).

The invariant every Gaussian certificate rests on: **every tensor the network computes with
is covered by the posterior (and its KL) or is identical to a data-independent value fixed
before the data**. What the module tree shows is checked here, before any forward pass:

* every buffer, floating-point or integer, equals the value of a data-independent reference
  (the ``--init`` file or a fresh build of the architecture): buffers can carry anything,
  including a memorised training set (:func:`check_buffers`);
* no module holds tensors (or long Python number lists) outside its parameters and buffers
  (:func:`unregistered_tensors`);
* with the layer sampler: every parameter belongs to a module with an exact per-example
  sampler (:mod:`pacbound.posterior.samplers`), and no parameter is tied to another or
  reachable under two names (:func:`check_structure`).

What only running the model shows is probed by :mod:`pacbound.posterior.probe`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.samplers import altered_modules, supported_types, unsupported_modules

#: Python lists or tuples of more numbers than this held by a module are refused: they could
#: hold a data set as well as a tensor could (layer sizes and similar settings are short).
MAX_PYTHON_NUMBERS = 64

_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def short_list(items: list[str], limit: int = 4) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def python_numbers(items: list[Any] | tuple[Any, ...]) -> int:
    """How many numbers a (nested) Python list or tuple holds."""
    count, stack = 0, [items]
    while stack:
        for v in stack.pop():
            if isinstance(v, (int, float, complex)):
                count += 1
            elif isinstance(v, (list, tuple)):
                stack.append(v)
    return count


def same_value(a: Tensor, b: Tensor) -> bool:
    """Same shape, dtype and values (NaN equal to NaN), wherever ``b`` lives."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    b = b.to(a.device)
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(torch.isnan(a), torch.isnan(b))) and torch.equal(
            torch.nan_to_num(a), torch.nan_to_num(b)
        )
    return torch.equal(a, b)


def tied_parameters(model: nn.Module) -> list[str]:
    """Names under which a parameter is reachable a second time (weight tying), as
    ``"alias = first name"``."""
    first: dict[int, str] = {}
    aliases = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases.append(f"{name} = {first[id(p)]}")
        else:
            first[id(p)] = name
    return aliases


def reused_modules(model: nn.Module) -> list[str]:
    """Parameterized modules reachable under two names (e.g. ``nn.Sequential(A, f, A)``)."""
    first: dict[int, str] = {}
    aliases = []
    for name, mod in model.named_modules(remove_duplicate=False):
        if not any(True for _ in mod.parameters(recurse=False)):
            continue
        if id(mod) in first:
            aliases.append(f"{name or '<root>'} = {first[id(mod)] or '<root>'}")
        else:
            first[id(mod)] = name
    return aliases


def layer_sampler_obstacles(model: nn.Module) -> list[str]:
    """What keeps the layer sampler off ``model`` (empty: every parameter-holding module has
    an exact layer sampler that applies, and no parameter or layer is shared): modules
    without a sampler, altered ones, tied parameters and reused modules."""
    return (
        [f"no layer sampler: {m}" for m in unsupported_modules(model)]
        + [f"altered: {m}" for m in altered_modules(model)]
        + [f"tied: {t}" for t in tied_parameters(model)]
        + [f"reused: {r}" for r in reused_modules(model)]
    )


def check_structure(model: nn.Module) -> None:
    """Refuse what the layer sampler cannot cover: parameters of a module type without an
    exact sampler, a registered type the sampler does not reproduce (hooks, extra
    parameters, unsupported settings), hidden tensors, tied weights and layers reachable
    under two names."""
    unsupported = unsupported_modules(model)
    if unsupported:
        raise InvalidInputError(
            "the layer sampler supports parameters of the registered layer types only "
            f"({supported_types(', ')}); these modules hold other parameters: "
            f"{short_list(unsupported)}. "
            "Draw every parameter per example with --sampler functional, or certify with a "
            "compression method"
        )
    altered = altered_modules(model)
    if altered:
        raise InvalidInputError(
            "these layers do not compute as the plain registered layer type: "
            f"{short_list(altered)}; the Gaussian layer that replaces them would drop that "
            "behaviour. Use --sampler functional, or certify with a compression method"
        )
    refuse_hidden_tensors(model)
    shared = tied_parameters(model) + reused_modules(model)
    if shared:
        raise InvalidInputError(
            f"the model shares weights ({short_list(shared)}): a tied weight is one coordinate "
            "of the hypothesis, drawn once per example, and the layer sampler does not draw "
            "that way. Use --sampler functional (one draw of the whole "
            "parameter vector per example), or certify with a compression method"
        )


def unregistered_tensors(model: nn.Module) -> list[str]:
    """``module.attribute`` paths of tensors (or NumPy arrays) held by a module outside its
    parameters and buffers, also inside lists, tuples, dicts and plain objects, and of Python
    lists/tuples of more than :data:`MAX_PYTHON_NUMBERS` numbers."""
    found = []
    for mod_name, mod in model.named_modules():
        for key, value in vars(mod).items():
            if key in _MODULE_INTERNALS or (key == "_flat_weights" and own_flat_weights(mod)):
                continue
            stack: list[tuple[str, Any, int]] = [(key, value, 0)]
            while stack:
                path, item, depth = stack.pop()
                where = f"{mod_name}.{path}" if mod_name else path
                if isinstance(item, (Tensor, np.ndarray)):
                    found.append(where)
                elif isinstance(item, (list, tuple)) and python_numbers(item) > MAX_PYTHON_NUMBERS:
                    found.append(f"{where} ({python_numbers(item)} numbers)")
                elif depth < 4 and isinstance(item, (list, tuple)):
                    stack.extend((f"{path}[{i}]", v, depth + 1) for i, v in enumerate(item))
                elif depth < 4 and isinstance(item, dict):
                    stack.extend((f"{path}[{k!r}]", v, depth + 1) for k, v in item.items())
                elif depth < 4 and hasattr(item, "__dict__") and not callable(item):
                    stack.extend((f"{path}.{k}", v, depth + 1) for k, v in vars(item).items())
    return sorted(found)


def own_flat_weights(module: nn.Module) -> bool:
    """Whether ``module`` is a recurrent layer whose ``_flat_weights`` list holds exactly its
    own parameters (torch's cache of them for the fused kernel, kept up to date on every
    assignment, so ``functional_call`` swaps them too), not tensors of its own."""
    if not isinstance(module, nn.RNNBase):
        return False
    names, flat = module._flat_weights_names, module._flat_weights
    return len(names) == len(flat) and all(
        w is module._parameters.get(n) for n, w in zip(names, flat, strict=True)
    )


def refuse_hidden_tensors(model: nn.Module) -> None:
    """Refuse the :func:`unregistered_tensors` of ``model``."""
    hidden = unregistered_tensors(model)
    if hidden:
        raise InvalidInputError(
            f"the model holds tensors outside its parameters and buffers ({short_list(hidden)}): "
            "they are part of the hypothesis and could hold data. Register them as buffers "
            "(checked against the --init file or a fresh build), or compute them in forward"
        )


def check_buffers(model: nn.Module, reference: Mapping[str, Tensor] | None) -> None:
    """Every buffer (floating-point or integer) must equal its data-independent reference
    value (the ``--init`` file, or a fresh build of the architecture): anything else is
    state the bound does not pay for (BatchNorm statistics, a memorised data set)."""
    reference = reference or {}
    differ = []
    for name, buf in model.named_buffers():
        ref = reference.get(name)
        if ref is None or not same_value(buf, ref):
            differ.append(f"{name} ({str(buf.dtype).removeprefix('torch.')})")
    if differ:
        source = "the --init file or a fresh build" if reference else "no data-independent value"
        raise InvalidInputError(
            f"the model computes with buffers that differ from {source}: {short_list(differ)}. "
            "Buffers are part of the hypothesis and may be derived from the data (BatchNorm "
            "statistics, a memorised training set); the bound does not pay for them. Pass "
            "--init with a checkpoint saved before training that holds these buffers, or "
            "certify with a compression method (which codes floating-point buffers)"
        )

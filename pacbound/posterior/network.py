"""A stochastic copy of a network: every parameter gets a Gaussian posterior.

:func:`build_stochastic_network` replaces each ``nn.Linear`` and ``nn.Conv2d`` of a deep
copy of the model with its Gaussian counterpart and enforces the invariant every certificate
rests on (MATH.md §4, §10): **every tensor the network computes with is covered by the
posterior (and its KL) or is identical to a data-independent value fixed before the data**.

With the default layer sampler (``Sampler.LAYERS``):

* every parameter belongs to a supported layer (anything else would be a point mass the KL
  does not pay for);
* no parameter is tied to another and no layer is reachable under two names (a tied weight
  is one coordinate of the hypothesis; today's layers would draw it twice, or leave one copy
  at the checkpoint's value);
* every buffer, floating-point or integer, equals the value of a data-independent reference
  (the ``--init`` file or a fresh build of the architecture): buffers can carry anything,
  including a memorised training set;
* at run time (:class:`~pacbound.posterior.layers.ForwardGuard`), each layer is called at
  most once per forward pass and sees the batch as its leading dimension, and
  :meth:`StochasticNetwork.check_coverage` runs a probe forward that refuses any use of a
  parameter outside its layer and any mixing of examples within a batch
  (:mod:`pacbound.posterior.probe`).

``Sampler.FUNCTIONAL`` instead covers every parameter of any module at once
(:class:`~pacbound.posterior.functional.FunctionalGaussian`): ties and reuse are drawn once
per example by construction; the buffer, hidden-tensor and probe checks apply as well.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.layers import (
    ForwardGuard,
    GaussianConv2d,
    GaussianLinear,
    SampleMode,
    _GaussianModule,
)


@dataclass(frozen=True)
class ParameterSlot:
    """Where one original parameter lives in the stochastic network."""

    name: str  # the original parameter name, e.g. "0.weight"
    module: _GaussianModule
    attr: str  # "weight" or "bias"

    @property
    def mu(self) -> nn.Parameter:
        return getattr(self.module, f"{self.attr}_mu")

    @property
    def log_sigma(self) -> nn.Parameter:
        return getattr(self.module, f"{self.attr}_log_sigma")


class StochasticNetwork(nn.Module):
    """The model with Gaussian weights; ``slots`` follow the model's parameter order."""

    def __init__(self, net: nn.Module, slots: list[ParameterSlot]) -> None:
        super().__init__()
        self.net = net
        self._slots = slots
        self._guard = ForwardGuard()
        for module in self.gaussian_modules():
            module.guard = self._guard
        self._buffers_at_build = {n: b.detach().clone() for n, b in net.named_buffers()}

    @property
    def slots(self) -> list[ParameterSlot]:
        return self._slots

    def forward(self, x: Tensor) -> Tensor:
        self._guard.start(int(x.shape[0]))
        sampling = [(m, m.mode, m.generator) for m in self.gaussian_modules()]
        self._guard.running = True
        try:
            out = self.net(x)
        finally:
            self._guard.running = False
        for module, mode, generator in sampling:
            if module.mode != mode or module.generator is not generator:
                raise InvalidInputError(
                    f"the model's forward changed how layer {module.layer_name!r} draws its "
                    "weights (its sampling mode or random generator): the certificate's draws "
                    "must be the ones pacbound makes"
                )
        return out

    def check_buffers_unchanged(self) -> None:
        """Refuse if fitting the posterior changed a floating-point buffer (e.g. a
        normalization layer's running statistics refitted to the data): the certificate
        would compute with state the KL does not pay for."""
        changed = [
            name
            for name, buf in self.net.named_buffers()
            if buf.is_floating_point()  # a forward's own counters may tick
            and (
                name not in self._buffers_at_build
                or not _same_value(buf, self._buffers_at_build[name])
            )
        ]
        if changed:
            raise InvalidInputError(
                f"fitting the posterior changed the model's buffers ({_short(changed)}): they "
                "would be data-derived state the bound does not pay for. Keep buffers fixed "
                "in forward (eval-mode normalization), or certify with a compression method"
            )

    @property
    def guard(self) -> ForwardGuard:
        return self._guard

    def check_coverage(self, x: Tensor, *, batch_independence: bool = True) -> None:
        """The probe forward passes of :func:`pacbound.posterior.probe.probe_network` on
        ``x`` (a batch at the certification batch size, on the network's device)."""
        from pacbound.posterior.probe import probe_network

        probe_network(self, x, batch_independence=batch_independence)

    def gaussian_modules(self) -> Iterator[_GaussianModule]:
        for module in self.net.modules():
            if isinstance(module, _GaussianModule):
                yield module

    def set_mode(self, mode: SampleMode, generator: torch.Generator | None = None) -> None:
        for module in self.gaussian_modules():
            module.mode = mode
            module.generator = generator

    def num_parameters(self) -> int:
        return sum(slot.mu.numel() for slot in self._slots)

    def set_log_sigma(self, value: float) -> None:
        with torch.no_grad():
            for slot in self._slots:
                slot.log_sigma.fill_(value)

    def mean_parameters(self) -> list[nn.Parameter]:
        return [slot.mu for slot in self._slots]

    def log_sigma_parameters(self) -> list[nn.Parameter]:
        return [slot.log_sigma for slot in self._slots]

    def state_for_saving(self) -> dict[str, Tensor]:
        """``{name}.mu`` and ``{name}.sigma`` for every original parameter (safetensors-ready)."""
        out: dict[str, Tensor] = {}
        for slot in self._slots:
            out[f"{slot.name}.mu"] = slot.mu.detach().cpu().contiguous()
            out[f"{slot.name}.sigma"] = torch.exp(slot.log_sigma.detach()).cpu().contiguous()
        return out


_SUPPORTED = (nn.Linear, nn.Conv2d)


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


def check_structure(model: nn.Module) -> None:
    """Refuse parameters the Gaussian posterior cannot cover: unsupported layer types,
    tied weights and layers reachable under two names."""
    unsupported = sorted(
        {
            f"{mod_name or '<root>'} ({type(mod).__name__})"
            for mod_name, mod in model.named_modules()
            if type(mod) not in _SUPPORTED and any(True for _ in mod.parameters(recurse=False))
        }
    )
    if unsupported:
        raise InvalidInputError(
            "the Gaussian posterior supports parameters of nn.Linear and nn.Conv2d only; "
            f"these modules hold other parameters: {_short(unsupported)}. "
            "Draw every parameter per example with --sampler functional, or certify with a "
            "compression method"
        )
    altered = [
        f"{mod_name} ({why})" for mod_name, mod in model.named_modules() for why in _altered(mod)
    ]
    if altered:
        raise InvalidInputError(
            f"these layers do not compute as a plain nn.Linear/nn.Conv2d: {_short(altered)}; "
            "the Gaussian layer that replaces them would drop that behaviour. Use --sampler "
            "functional, or certify with a compression method"
        )
    _refuse_hidden_tensors(model)
    shared = tied_parameters(model) + reused_modules(model)
    if shared:
        raise InvalidInputError(
            f"the model shares weights ({_short(shared)}): a tied weight is one coordinate of "
            "the hypothesis, drawn once per example, and the layer sampler does not draw "
            "that way. Use --sampler functional (one draw of the whole "
            "parameter vector per example), or certify with a compression method"
        )


def _altered(mod: nn.Module) -> list[str]:
    """Why a supported layer does not compute as the plain layer type (hooks, extra
    parameters, a padding mode the Gaussian convolution does not implement)."""
    if type(mod) not in _SUPPORTED:
        return []
    why = []
    if mod._forward_hooks or mod._forward_pre_hooks:
        why.append("forward hooks")
    extra = sorted(set(mod._parameters) - {"weight", "bias"})
    if extra:
        why.append(f"extra parameters {', '.join(extra)}")
    if isinstance(mod, nn.Conv2d) and mod.padding_mode != "zeros":
        why.append(f"padding_mode {mod.padding_mode!r}")
    return why


_MODULE_INTERNALS = frozenset(vars(nn.Module()))

#: Python lists or tuples of more numbers than this held by a module are refused: they could hold a
#: data set as well as a tensor could (layer sizes and similar settings are short).
MAX_PYTHON_NUMBERS = 64


def _numbers(items: list[Any] | tuple[Any, ...]) -> int:
    """How many numbers a (nested) Python list or tuple holds."""
    count, stack = 0, [items]
    while stack:
        for v in stack.pop():
            if isinstance(v, (int, float, complex)):
                count += 1
            elif isinstance(v, (list, tuple)):
                stack.append(v)
    return count


def unregistered_tensors(model: nn.Module) -> list[str]:
    """``module.attribute`` paths of tensors (or NumPy arrays) held by a module outside its
    parameters and buffers, also inside lists, tuples, dicts and plain objects, and of Python
    lists/tuples of more than :data:`MAX_PYTHON_NUMBERS` numbers."""
    import numpy as np

    found = []
    for mod_name, mod in model.named_modules():
        for key, value in vars(mod).items():
            if key in _MODULE_INTERNALS:
                continue
            stack: list[tuple[str, Any, int]] = [(key, value, 0)]
            while stack:
                path, item, depth = stack.pop()
                where = f"{mod_name}.{path}" if mod_name else path
                if isinstance(item, (Tensor, np.ndarray)):
                    found.append(where)
                elif isinstance(item, (list, tuple)) and _numbers(item) > MAX_PYTHON_NUMBERS:
                    found.append(f"{where} ({_numbers(item)} numbers)")
                elif depth < 4 and isinstance(item, (list, tuple)):
                    stack.extend((f"{path}[{i}]", v, depth + 1) for i, v in enumerate(item))
                elif depth < 4 and isinstance(item, dict):
                    stack.extend((f"{path}[{k!r}]", v, depth + 1) for k, v in item.items())
                elif depth < 4 and hasattr(item, "__dict__") and not callable(item):
                    stack.extend((f"{path}.{k}", v, depth + 1) for k, v in vars(item).items())
    return sorted(found)


def _same_value(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    b = b.to(a.device)
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(torch.isnan(a), torch.isnan(b))) and torch.equal(
            torch.nan_to_num(a), torch.nan_to_num(b)
        )
    return torch.equal(a, b)


def _refuse_hidden_tensors(model: nn.Module) -> None:
    hidden = unregistered_tensors(model)
    if hidden:
        raise InvalidInputError(
            f"the model holds tensors outside its parameters and buffers ({_short(hidden)}): "
            "they are part of the hypothesis and could hold data. Register them as buffers "
            "(checked against the --init file or a fresh build), or compute them in forward"
        )


def _copy(model: nn.Module) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch's own deprecation notice when copying a torch.export program's module
            warnings.simplefilter("ignore", FutureWarning)
            return copy.deepcopy(model)
    except Exception as exc:  # e.g. a traced function held as an attribute
        raise InvalidInputError(
            f"the model cannot be copied to build the posterior ({type(exc).__name__}: "
            f"{str(exc)[:100]}); keep only modules, parameters and buffers on it"
        ) from None


def _functional_network(
    model: nn.Module, log_sigma_init: float, fixed_buffers: Mapping[str, Tensor] | None
) -> StochasticNetwork:
    """Every parameter of ``model`` covered by one :class:`FunctionalGaussian`."""
    from pacbound.posterior.functional import FunctionalGaussian

    _refuse_hidden_tensors(model)
    check_buffers(model, fixed_buffers)
    if not any(True for _ in model.parameters()):
        raise InvalidInputError("the model has no parameters to put a posterior on")
    net = FunctionalGaussian(_copy(model), log_sigma_init)
    net.layer_name = "<model>"
    slots = [ParameterSlot(name, net, net.slot_attr(name)) for name in net.slot_names]
    stochastic = StochasticNetwork(net, slots)
    stochastic.eval()
    return stochastic


def check_buffers(model: nn.Module, reference: Mapping[str, Tensor] | None) -> None:
    """Every buffer (floating-point or integer) must equal its data-independent reference
    value (the ``--init`` file, or a fresh build of the architecture): anything else is
    state the bound does not pay for (BatchNorm statistics, a memorised data set)."""
    reference = reference or {}
    differ = []
    for name, buf in model.named_buffers():
        ref = reference.get(name)
        if ref is None or not _same_value(buf, ref):
            differ.append(f"{name} ({str(buf.dtype).removeprefix('torch.')})")
    if differ:
        source = "the --init file or a fresh build" if reference else "no data-independent value"
        raise InvalidInputError(
            f"the model computes with buffers that differ from {source}: {_short(differ)}. "
            "Buffers are part of the hypothesis and may be derived from the data (BatchNorm "
            "statistics, a memorised training set); the bound does not pay for them. Pass "
            "--init with a checkpoint saved before training that holds these buffers, or "
            "certify with a compression method (which codes floating-point buffers)"
        )


def _short(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class Sampler(str, Enum):
    """How per-example weight draws are made (MATH.md §10).

    ``layers``: each nn.Linear/nn.Conv2d is replaced by a Gaussian layer with an exact fast
    sampler (local reparameterization on 2-D input, per-example weights otherwise); every
    other parameter, tie or reuse is refused. ``functional``: the whole parameter vector is
    drawn per example and each example is evaluated alone (``torch.func.vmap`` over
    ``functional_call``): any module, ties and reuse included, at memory ∝ examples ×
    parameters (:class:`~pacbound.posterior.functional.FunctionalGaussian`).
    """

    LAYERS = "layers"
    FUNCTIONAL = "functional"


def build_stochastic_network(
    model: nn.Module,
    *,
    log_sigma_init: float = -5.0,
    fixed_buffers: Mapping[str, Tensor] | None = None,
    sampler: Sampler = Sampler.LAYERS,
) -> StochasticNetwork:
    """A stochastic copy of ``model`` with means at its current weights.

    ``fixed_buffers`` are the data-independent values of the model's buffers (from the
    ``--init`` file or a fresh build); every buffer must equal its value there. Raises
    :class:`InvalidInputError` naming the modules/tensors that break the invariant of the
    module docstring. Call :meth:`StochasticNetwork.check_coverage` on a few inputs before
    certifying: it catches uses of parameters that only a forward pass reveals.
    """
    if sampler is Sampler.FUNCTIONAL:
        return _functional_network(model, log_sigma_init, fixed_buffers)
    check_structure(model)
    check_buffers(model, fixed_buffers)
    net = _copy(model)
    slots: list[ParameterSlot] = []
    replacements: dict[str, _GaussianModule] = {}
    for mod_name, mod in list(net.named_modules()):
        new: _GaussianModule | None = None
        if isinstance(mod, nn.Linear):
            new = GaussianLinear(mod, log_sigma_init)
        elif isinstance(mod, nn.Conv2d):
            new = GaussianConv2d(mod, log_sigma_init)
        if new is not None:
            new.layer_name = mod_name
            replacements[mod_name] = new
    for mod_name, new in replacements.items():
        if mod_name == "":
            raise InvalidInputError("the model itself is a single layer; wrap it in nn.Sequential")
        parent_name, _, child = mod_name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, new)
    for param_name, _ in model.named_parameters():
        mod_name, _, attr = param_name.rpartition(".")
        slots.append(ParameterSlot(param_name, replacements[mod_name], attr))
    stochastic = StochasticNetwork(net, slots)
    covered = {id(p) for slot in slots for p in (slot.mu, slot.log_sigma)}
    stray = [name for name, p in stochastic.named_parameters() if id(p) not in covered]
    if stray:  # a parameter the checks above missed must never stay a point mass
        raise InvalidInputError(f"parameters not covered by the posterior: {_short(stray)}")
    stochastic.eval()
    return stochastic

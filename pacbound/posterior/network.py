"""A stochastic copy of a network: every parameter gets a Gaussian posterior.

:func:`build_stochastic_network` replaces each ``nn.Linear`` and ``nn.Conv2d`` of a deep
copy of the model with its Gaussian counterpart and enforces the invariant every certificate
rests on (MATH.md §4, §10): **every tensor the network computes with is covered by the
posterior (and its KL) or is identical to a data-independent value fixed before the data**.

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
  parameter outside its layer and any mixing of examples within a batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

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

    @property
    def slots(self) -> list[ParameterSlot]:
        return self._slots

    def forward(self, x: Tensor) -> Tensor:
        self._guard.start(int(x.shape[0]))
        return self.net(x)

    @torch.no_grad()
    def check_coverage(self, x: Tensor, *, batch_independence: bool = True) -> None:
        """Probe forward passes on a few examples ``x`` (on the network's device) that refuse
        what the static checks cannot see: a parameter used outside its layer (a raw
        ``torch`` op on a module's weight, a closure over it), a layer that does not see the
        batch as its leading dimension (tried at two batch sizes), and a model whose output
        for one example depends on the other examples of its batch (skipped with
        ``batch_independence=False``, for models whose forward is random by design)."""
        own = {id(p) for p in self.parameters()}
        mode = self.training
        self.eval()
        # A private stream: the probe must not move any random stream of the certificate.
        probe_gen = torch.Generator(device=x.device).manual_seed(0)
        try:
            with _ForeignParameterProbe(own):
                self.set_mode("per_example", probe_gen)
                for size in sorted({min(2, x.shape[0]), min(3, x.shape[0])}):
                    self(x[:size])
                self.set_mode("mean")
                together = self(x[:3])
                alone = torch.cat([self(x[i : i + 1]) for i in range(together.shape[0])])
        finally:
            self.set_mode("per_example")
            self.train(mode)
        if not batch_independence:
            return
        scale = 1.0 + float(together.abs().max()) if together.numel() else 1.0
        if together.shape != alone.shape or not torch.allclose(
            together, alone, rtol=1e-4, atol=1e-4 * scale
        ):
            raise InvalidInputError(
                "the model's output for an example depends on the other examples in its batch "
                "(batch-level mixing, e.g. train-mode normalization or attention across the "
                "batch): per-example certificates need per-example predictions"
            )

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


class _ForeignParameterProbe(TorchFunctionMode):
    """Refuses any ``nn.Parameter`` used by a torch op that is not a posterior parameter."""

    def __init__(self, own: set[int]) -> None:
        super().__init__()
        self.own = own

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        for arg in _tensors(args, kwargs):
            if isinstance(arg, nn.Parameter) and id(arg) not in self.own:
                raise InvalidInputError(
                    f"the model computes with a parameter of shape {list(arg.shape)} that the "
                    "posterior does not cover (a weight used outside its layer, or held "
                    "outside the module tree); certify with a compression method"
                )
        return func(*args, **kwargs)


def _tensors(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[Tensor]:
    out: list[Tensor] = []
    stack: list[Any] = [*args, *kwargs.values()]
    while stack:
        item = stack.pop()
        if isinstance(item, Tensor):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return out


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
            if not isinstance(mod, _SUPPORTED) and any(True for _ in mod.parameters(recurse=False))
        }
    )
    if unsupported:
        raise InvalidInputError(
            "the Gaussian posterior supports parameters of nn.Linear and nn.Conv2d only; "
            f"these modules hold other parameters: {_short(unsupported)}. "
            "Use an architecture made of Linear/Conv2d layers (with parameter-free "
            "activations, pooling and reshapes) or certify with a compression method"
        )
    shared = tied_parameters(model) + reused_modules(model)
    if shared:
        raise InvalidInputError(
            f"the model shares weights ({_short(shared)}): a tied weight is one coordinate of "
            "the hypothesis, drawn once per example, which the Gaussian posterior does not "
            "support yet. Untie the weights, or certify with a compression method"
        )


def check_buffers(model: nn.Module, reference: Mapping[str, Tensor] | None) -> None:
    """Every buffer (floating-point or integer) must equal its data-independent reference
    value (the ``--init`` file, or a fresh build of the architecture): anything else is
    state the bound does not pay for (BatchNorm statistics, a memorised data set)."""
    reference = reference or {}
    differ = []
    for name, buf in model.named_buffers():
        ref = reference.get(name)
        same = (
            ref is not None
            and ref.shape == buf.shape
            and ref.dtype == buf.dtype
            and torch.equal(ref.to(buf.device), buf)
        )
        if not same:
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


def build_stochastic_network(
    model: nn.Module,
    *,
    log_sigma_init: float = -5.0,
    fixed_buffers: Mapping[str, Tensor] | None = None,
) -> StochasticNetwork:
    """A stochastic copy of ``model`` with means at its current weights.

    ``fixed_buffers`` are the data-independent values of the model's buffers (from the
    ``--init`` file or a fresh build); every buffer must equal its value there. Raises
    :class:`InvalidInputError` naming the modules/tensors that break the invariant of the
    module docstring. Call :meth:`StochasticNetwork.check_coverage` on a few inputs before
    certifying: it catches uses of parameters that only a forward pass reveals.
    """
    check_structure(model)
    check_buffers(model, fixed_buffers)
    net = copy.deepcopy(model)
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

"""A stochastic copy of a network: every parameter gets a Gaussian posterior.

:func:`build_stochastic_network` replaces each ``nn.Linear`` and ``nn.Conv2d`` of a deep
copy of the model with its Gaussian counterpart and checks that *every* parameter of the
model is covered (a parameter we cannot sample would silently be a point mass that the
KL does not pay for). Floating-point buffers (e.g. BatchNorm running statistics) are
estimated from data in general and must be fixed independently of the bound sample; the
caller passes the buffers it vouches for (from the init checkpoint), anything else is
refused (MATH.md §4).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.layers import GaussianConv2d, GaussianLinear, SampleMode, _GaussianModule


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

    @property
    def slots(self) -> list[ParameterSlot]:
        return self._slots

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

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


def _replace(parent: nn.Module, name: str, new: nn.Module) -> None:
    setattr(parent, name, new)


def build_stochastic_network(
    model: nn.Module, *, log_sigma_init: float = -5.0, trusted_buffers: set[str] | None = None
) -> StochasticNetwork:
    """A stochastic copy of ``model`` with means at its current weights.

    Raises :class:`InvalidInputError` if a parameter belongs to a module type other than
    ``nn.Linear``/``nn.Conv2d`` (listing them), or if the model has floating-point buffers
    not in ``trusted_buffers`` (they would be data-derived state the bound does not pay for).
    """
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
            f"these modules hold other parameters: {', '.join(unsupported)}. "
            "Use an architecture made of Linear/Conv2d layers (with parameter-free "
            "activations, pooling and reshapes) or certify with a compression method"
        )
    trusted = trusted_buffers or set()
    data_buffers = [
        name
        for name, buf in model.named_buffers()
        if buf.is_floating_point() and name not in trusted
    ]
    if data_buffers:
        raise InvalidInputError(
            f"the model has floating-point buffers ({', '.join(data_buffers)}), e.g. BatchNorm "
            "running statistics; they are part of the hypothesis and the bound does not pay "
            "for them unless they are fixed before seeing the data. Pass --init with a "
            "checkpoint holding exactly these buffer values, or use a model without them"
        )
    net = copy.deepcopy(model)
    slots: list[ParameterSlot] = []
    replacements: dict[str, _GaussianModule] = {}
    for mod_name, mod in list(net.named_modules()):
        if isinstance(mod, nn.Linear):
            replacements[mod_name] = GaussianLinear(mod, log_sigma_init)
        elif isinstance(mod, nn.Conv2d):
            replacements[mod_name] = GaussianConv2d(mod, log_sigma_init)
    for mod_name, new in replacements.items():
        if mod_name == "":
            raise InvalidInputError("the model itself is a single layer; wrap it in nn.Sequential")
        parent_name, _, child = mod_name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        _replace(parent, child, new)
    for param_name, _ in model.named_parameters():
        mod_name, _, attr = param_name.rpartition(".")
        slots.append(ParameterSlot(param_name, replacements[mod_name], attr))
    stochastic = StochasticNetwork(net, slots)
    stochastic.eval()
    return stochastic

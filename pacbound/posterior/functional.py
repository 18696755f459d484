"""The generic per-example sampler: any module, every parameter ~ N(μ, diag σ²).

:class:`FunctionalGaussian` takes over every parameter of a module and evaluates it with
``torch.func.functional_call``. In ``"per_example"`` mode each example i gets its own draw
θ_i = μ + σ ⊙ ε_i of the **whole** parameter vector and is evaluated alone under
``torch.func.vmap`` (MATH.md §10): by construction every use of every weight in example i's
forward pass sees θ_i (a tied weight is one coordinate, drawn once; a block called twice uses
the same draw), and no example's output can depend on another example. The price is memory
∝ examples × parameters, so examples are processed in chunks of
:data:`~pacbound.posterior.layers.PER_EXAMPLE_WEIGHT_ELEMENTS` weight elements.

``"shared"`` (training only) uses one draw per call; ``"mean"`` evaluates at μ. The module's
own tensors other than its parameters (buffers, constants made in ``forward``) are unchanged;
the network-level checks see to them. Randomness inside ``forward`` is refused by ``vmap``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from pacbound.errors import InvalidInputError
from pacbound.posterior import layers
from pacbound.posterior.layers import _GaussianModule


def _delete_parameter(module: nn.Module, dotted: str) -> None:
    """Replace the parameter ``dotted`` by an empty, non-persistent placeholder buffer: every
    call supplies the drawn tensor for it (``functional_call``), so its value is never read."""
    owner_name, _, attr = dotted.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    del owner._parameters[attr]
    owner.register_buffer(attr, torch.empty(0), persistent=False)


class FunctionalGaussian(_GaussianModule):
    """Every parameter of ``base`` with a diagonal Gaussian posterior (see the module doc).

    ``slot_names`` are the parameters in ``named_parameters()`` order; parameter ``i`` has
    posterior tensors ``p{i}_mu`` and ``p{i}_log_sigma``.
    """

    def __init__(self, base: nn.Module, log_sigma_init: float) -> None:
        nn.Module.__init__(self)
        self.mode = "per_example"
        self.generator = None
        first: dict[int, str] = {}
        self.aliases: dict[str, list[str]] = {}
        for name, p in base.named_parameters(remove_duplicate=False):
            key = first.setdefault(id(p), name)
            self.aliases.setdefault(key, []).append(name)
        self.slot_names = list(self.aliases)
        for i, (_, p) in enumerate(base.named_parameters()):
            self.register_parameter(f"p{i}_mu", nn.Parameter(p.detach().clone()))
            self.register_parameter(
                f"p{i}_log_sigma", nn.Parameter(torch.full_like(p.detach(), log_sigma_init))
            )
        for names in self.aliases.values():
            for name in names:
                _delete_parameter(base, name)
        self.base = base

    def slot_attr(self, name: str) -> str:
        return f"p{self.slot_names.index(name)}"

    def _tensors(self, values: list[Tensor]) -> dict[str, Tensor]:
        """One tensor per parameter, under every name it is reachable by (ties)."""
        return {
            alias: value
            for name, value in zip(self.slot_names, values, strict=True)
            for alias in self.aliases[name]
        }

    def _mu(self) -> list[Tensor]:
        return [getattr(self, f"p{i}_mu") for i in range(len(self.slot_names))]

    def _sigma(self) -> list[Tensor]:
        return [torch.exp(getattr(self, f"p{i}_log_sigma")) for i in range(len(self.slot_names))]

    def forward(self, x: Tensor) -> Tensor:
        self._enter(x)
        if self.mode == "mean":
            return functional_call(self.base, self._tensors(self._mu()), (x,))
        mus, sigmas = self._mu(), self._sigma()
        if self.mode == "shared":
            drawn = [m + s * self._noise(m.shape, x) for m, s in zip(mus, sigmas, strict=True)]
            return functional_call(self.base, self._tensors(drawn), (x,))
        return self._per_example(x, mus, sigmas)

    def _per_example(self, x: Tensor, mus: list[Tensor], sigmas: list[Tensor]) -> Tensor:
        size = sum(m.numel() for m in mus)
        step = max(1, layers.PER_EXAMPLE_WEIGHT_ELEMENTS // max(size, 1))
        names = list(self._tensors(mus))

        def one(params: dict[str, Tensor], xi: Tensor) -> Tensor:
            return functional_call(self.base, params, (xi.unsqueeze(0),)).squeeze(0)

        chunks = []
        for start in range(0, int(x.shape[0]), step):
            rows = min(step, int(x.shape[0]) - start)
            drawn = [
                m + s * self._noise((rows, *m.shape), x, start)
                for m, s in zip(mus, sigmas, strict=True)
            ]
            params = self._tensors(drawn)
            guard = self.guard
            if guard is not None:
                guard.opaque = True  # inside vmap: per-example by construction
            try:
                out = vmap(one)({n: params[n] for n in names}, x[start : start + rows])
            except RuntimeError as exc:
                raise InvalidInputError(
                    "the model cannot be evaluated one example at a time with its own weights "
                    f"(torch.func.vmap: {str(exc).splitlines()[0][:160]}); randomness or "
                    "in-place updates in forward are not supported by --sampler functional"
                ) from None
            finally:
                if guard is not None:
                    guard.opaque = False
            if guard is not None:
                guard.vouched.append(out)
            chunks.append(out)
        return torch.cat(chunks)

    def extra_repr(self) -> str:
        return f"{len(self.slot_names)} parameter tensors, mode={self.mode}"

    def __getattr__(self, name: str) -> Any:
        return nn.Module.__getattr__(self, name)

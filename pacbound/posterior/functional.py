"""The generic per-example sampler: any module, every parameter ~ N(μ, diag σ²).

:class:`FunctionalGaussian` takes over every parameter of a module and evaluates it with
``torch.func.functional_call``. In ``"per_example"`` mode each example i gets its own draw
θ_i = μ + σ ⊙ ε_i of the **whole** parameter vector and is evaluated alone under
``torch.func.vmap`` (MATH.md §10): by construction every use of every weight in example i's
forward pass sees θ_i (a tied weight is one coordinate, drawn once; a block called twice uses
the same draw), and no example's output can depend on another example. The price is memory
∝ examples × parameters, so examples are processed in chunks that keep the per-example
parameter tensors within the memory budget (``--max-memory``,
:func:`~pacbound.posterior.layers.chunk_plan`).

``"shared"`` (training only) uses one draw per call; ``"mean"`` evaluates at μ. The module's
own tensors other than its parameters (buffers, constants made in ``forward``) are unchanged;
the network-level checks see to them. Randomness inside ``forward`` is refused by ``vmap``.
A model with an op ``vmap`` cannot batch (torch's fused recurrent kernels: nn.RNN, GRU, LSTM)
is evaluated by a loop over the examples instead, with the same draws, each example still
alone (slower; randomness refused there too, whatever generator it draws from).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from pacbound.errors import InvalidInputError
from pacbound.posterior.layers import GaussianModule, scaled_noise


class FunctionalGaussian(GaussianModule):
    """Every parameter of ``base`` with a diagonal Gaussian posterior (see the module doc).

    ``slot_names`` are the parameters in ``named_parameters()`` order; parameter ``i`` has
    posterior tensors ``p{i}_mu`` and ``p{i}_log_sigma``.
    """

    budgeted = True

    def __init__(self, base: nn.Module, log_sigma_init: float) -> None:
        nn.Module.__init__(self)
        self.mode = "per_example"
        self.generator = None
        #: Per-example evaluation by a loop over the examples instead of ``vmap`` (set on
        #: the first op ``vmap`` cannot batch, e.g. a fused recurrent kernel).
        self.looped = False
        self.slot_names = [name for name, _ in base.named_parameters()]  # ties: first name
        for i, (_, p) in enumerate(base.named_parameters()):
            self.register_parameter(f"p{i}_mu", nn.Parameter(p.detach().clone()))
            self.register_parameter(
                f"p{i}_log_sigma", nn.Parameter(torch.full_like(p.detach(), log_sigma_init))
            )
        for p in base.parameters():
            # The checkpoint's values stay registered (so that forward code reading
            # self.parameters() sees the tensors functional_call swaps in) but are never
            # computed with: every call supplies a tensor for every name, ties included.
            p.requires_grad_(False)
        self.base = base

    def slot_attr(self, name: str) -> str:
        return f"p{self.slot_names.index(name)}"

    def _tensors(self, values: list[Tensor]) -> dict[str, Tensor]:
        """One tensor per parameter under its first name; ``functional_call`` (with
        ``tie_weights``) uses it for every name of a tied parameter."""
        return dict(zip(self.slot_names, values, strict=True))

    def _mu(self) -> list[Tensor]:
        return [getattr(self, f"p{i}_mu") for i in range(len(self.slot_names))]

    def _sigma(self) -> list[Tensor]:
        return [torch.exp(getattr(self, f"p{i}_log_sigma")) for i in range(len(self.slot_names))]

    def forward(self, x: Tensor) -> Tensor:
        self._enter(x)
        try:
            if self.mode == "mean":  # a copy: forward code must not change μ in place
                return self._call(self._tensors([m.clone() for m in self._mu()]), x)
            mus, sigmas = self._mu(), self._sigma()
            if self.mode == "shared":
                drawn = [m + s * self._noise(m.shape, m) for m, s in zip(mus, sigmas, strict=True)]
                return self._call(self._tensors(drawn), x)
            return self._per_example(x, mus, sigmas)
        except InvalidInputError:
            raise
        except Exception as exc:  # the model's own code failed under functional_call/vmap
            raise InvalidInputError(
                "the model cannot be evaluated with its parameters supplied per call "
                f"(--sampler functional: {type(exc).__name__}: {str(exc).splitlines()[0][:140]}"
                "); randomness or in-place updates of state in forward are not supported"
            ) from None

    def _call(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        out: Tensor = functional_call(self.base, params, (x,))
        return out

    def groups(self) -> list[list[int]]:
        """The parameters drawn together, by owning module (``"0.weight"`` and ``"0.bias"``):
        their noise is keyed by their names joined, as the layer samplers key a layer's."""
        owners: dict[str, list[int]] = {}
        for i, name in enumerate(self.slot_names):
            owners.setdefault(name.rpartition(".")[0], []).append(i)
        return list(owners.values())

    def _draw_chunk(
        self, mus: list[Tensor], sigmas: list[Tensor], rows: int, first: int
    ) -> list[Tensor]:
        """Every parameter's per-example draws for the batch's examples ``first …``."""
        drawn: list[Tensor | None] = [None] * len(mus)
        for members in self.groups():
            label = "|".join(self.slot_names[i] for i in members)
            shapes = [mus[i].shape for i in members]
            noise = self._example_noise(label, shapes, rows, first, mus[members[0]])
            for i, eps in zip(members, noise, strict=True):
                drawn[i] = scaled_noise(mus[i], sigmas[i], eps)
        return [d for d in drawn if d is not None]

    def _per_example(self, x: Tensor, mus: list[Tensor], sigmas: list[Tensor]) -> Tensor:
        b = int(x.shape[0])
        # Chunks of examples within the memory budget (the draws do not depend on them).
        step = self._plan(b)

        def one(params: dict[str, Tensor], xi: Tensor) -> Tensor:
            return self._call(params, xi.unsqueeze(0)).squeeze(0)

        chunks = []
        for start in range(0, b, step):
            rows = min(step, b - start)
            drawn = self._draw_chunk(mus, sigmas, rows, start)
            params = self._tensors(drawn)
            del drawn
            guard = self.guard
            if guard is not None:
                guard.opaque = True  # inside vmap: per-example by construction
            try:
                out = self._batched(one, params, x[start : start + rows])
            finally:
                if guard is not None:
                    guard.opaque = False
            if guard is not None:
                guard.vouched.append(out)
            chunks.append(out)
        return torch.cat(chunks)

    def _batched(self, one: Any, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """``one`` on every example with its own row of ``params``: ``vmap``, or a loop over
        the examples for a model with an op ``vmap`` cannot batch (torch's fused recurrent
        kernels): the same draws, each example still evaluated alone."""
        if not self.looped:
            try:
                with warnings.catch_warnings():
                    # torch's notice that an op has no batching rule (a slower fallback)
                    warnings.filterwarnings("ignore", "There is a performance drop")
                    out: Tensor = vmap(one)(params, x)
                return out
            except RuntimeError as exc:
                if "Batching rule not implemented" not in str(exc):
                    raise
                self.looped = True
        with _NoRandomness():  # as vmap refuses randomness, whatever the generator
            rows = [one({k: v[i] for k, v in params.items()}, x[i]) for i in range(len(x))]
        return torch.stack(rows)

    def extra_repr(self) -> str:
        return f"{len(self.slot_names)} parameter tensors, mode={self.mode}"

    def __getattr__(self, name: str) -> Any:
        return nn.Module.__getattr__(self, name)


class _NoRandomness(TorchDispatchMode):
    """Refuses every random op (torch tags them ``nondeterministic_seeded``), whichever
    generator it draws from: the loop's counterpart of ``vmap``'s randomness check."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if torch.Tag.nondeterministic_seeded in func.tags:
            raise RuntimeError(f"a random op ({func}) ran in forward")
        return func(*args, **(kwargs or {}))

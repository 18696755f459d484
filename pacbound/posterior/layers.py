"""Layers whose weights are drawn from a diagonal Gaussian, independently per example.

Two sampling modes:

``"per_example"`` (certification). Every example gets its own independent weight draw:
  * :class:`GaussianLinear` on 2-D input (batch, features) uses the local reparameterization
    (Kingma, Salimans & Welling 2015): the pre-activation b_j ~ N(Σ_i x_i μ_ij, Σ_i x_i² σ²_ij),
    which is *exactly* the distribution under a fresh weight draw for that example, since
    output columns are independent. On N-D input (batch, positions…, features) one weight
    matrix is drawn per example and shared by all its positions (a batched matmul): local
    reparameterization there would draw per position, not per example (MATH.md §10).
  * the other families live beside this module: convolutions (:mod:`~.layers_conv`, real
    per-example kernels in one grouped convolution; local reparameterization is **not**
    exact there), embeddings (:mod:`~.layers_embedding`, one draw per distinct row per
    example) and elementwise affine maps (:mod:`~.layers_affine`, LayerNorm, GroupNorm,
    ChannelAffine: one vector per example).

The noise of every per-example draw is keyed by (seed, purpose, pass, example index,
tensors) (:mod:`~pacbound.posterior.streams`): it does not depend on the batch size, on the
memory budget or on the rank that evaluates the example. Per-example weight tensors stay
within the memory budget (``--max-memory``): examples are evaluated in chunks
(:func:`chunk_plan`), which change nothing in the draws.

``"shared"`` (training only): one weight draw per mini-batch for convolutions (cheaper);
Linear layers still use the local reparameterization. Draws come from the network's
sequential generator. Never used for certificates.

``"mean"``: deterministic forward with the posterior mean.

Inside a :class:`~pacbound.posterior.network.StochasticNetwork` every layer checks, on every
call, the two facts that make its draws per-example draws of one hypothesis (MATH.md §10):
its input's leading dimension is the network's batch (examples, not positions or a reshaped
batch), and it is called at most once per forward pass (a second call would draw its weights
a second time for the same example). Either failure refuses the model.

Which module types these layers replace, and when (exact type, no hooks, zero padding…), is
decided in one place: the layer-sampler registry :mod:`pacbound.posterior.samplers`. A new
exact sampler is a :class:`GaussianModule` subclass plus one entry there.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.streams import NOISE_BLOCK_ELEMENTS, DrawKey, DrawStream, block_rows

SampleMode = Literal["per_example", "shared", "mean"]

#: Per-example weight tensors alive at once per drawn element: the noise ε, σ ⊙ ε and
#: the drawn weights μ + σ ⊙ ε (:meth:`GaussianModule.plan`).
WEIGHT_COPIES = 3

#: The memory budget for per-example weight tensors of a layer built outside a network
#: (:func:`default_max_memory` otherwise): three copies of one float32 noise block (192 MiB).
DEFAULT_MAX_MEMORY = WEIGHT_COPIES * 4 * NOISE_BLOCK_ELEMENTS


#: ``--max-memory`` by default: this fraction of the device's memory (RAM on a CPU).
DEFAULT_MEMORY_FRACTION = 0.25


def default_max_memory(device: torch.device | str | None = None) -> int:
    """:data:`DEFAULT_MEMORY_FRACTION` of the CUDA device's total memory, or of the
    machine's physical RAM (at least :data:`DEFAULT_MAX_MEMORY`)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 4 * DEFAULT_MAX_MEMORY
    return max(DEFAULT_MAX_MEMORY, int(total * DEFAULT_MEMORY_FRACTION))


def format_bytes(size: int) -> str:
    """``size`` in the largest binary unit that keeps it ≥ 1, e.g. ``"1.5 GiB"``."""
    value, unit = float(size), "B"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{value:.4g} {unit}" if unit != "B" else f"{size} B"


def chunk_plan(rows: int, elements: int, itemsize: int, budget: int, layer: str) -> int:
    """Examples evaluated together when each draws ``elements`` weight elements: a chunk
    keeps its :data:`WEIGHT_COPIES` copies within ``budget`` bytes, in whole noise blocks
    (:func:`~pacbound.posterior.streams.block_rows`) when one fits. The draws themselves
    do not depend on the chunks (:mod:`~pacbound.posterior.streams`); below one block, a
    block is drawn once per chunk that needs rows of it."""
    need = WEIGHT_COPIES * elements * itemsize
    if need > budget:
        raise InvalidInputError(
            f"--max-memory {format_bytes(budget)} is too small for one example's weight draws "
            f"of {layer!r} ({elements} elements); the smallest budget that works is "
            f"{format_bytes(need)} ({need} bytes)",
            param="--max-memory",
        )
    fit = max(1, budget // max(need, 1))
    block = block_rows(elements)
    return min(rows, fit // block * block if fit >= block else fit)


def scaled_noise(mu: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    """μ + σ ⊙ ε (ε broadcast over leading example dimensions), in ε's own memory when no
    gradient is recorded (the same rounding: σ ⊙ ε, then + μ)."""
    if torch.is_grad_enabled() and (mu.requires_grad or sigma.requires_grad):
        return mu + sigma * eps
    return eps.mul_(sigma).add_(mu)


class ForwardGuard:
    """The state of one forward pass of a stochastic network, shared by its layers."""

    def __init__(self) -> None:
        self.batch: int | None = None
        self.called: set[str] = set()
        #: During a probe (:mod:`pacbound.posterior.probe`): the examples (a boolean mask
        #: over the batch) whose weight noise every layer changes, to check that no other
        #: example's output moves.
        self.perturb_rows: Tensor | None = None
        #: The Gaussian layers whose forward is running (innermost last).
        self.active: list[str] = []
        #: True while the network's forward runs: sampling settings are then read-only.
        self.running = False
        #: True while a layer evaluates examples one by one under ``torch.func.vmap``
        #: (per-example by construction; the data-flow probe does not look inside).
        self.opaque = False
        #: Outputs of such vmapped evaluations (made outside any op the probe can see).
        self.vouched: list[Tensor] = []

    def start(self, batch: int) -> None:
        self.batch = batch
        self.called = set()
        self.vouched = []

    def enter(self, layer: str, x: Tensor) -> None:
        if self.batch is None:
            return
        if layer in self.called:
            raise InvalidInputError(
                f"module {layer!r} is called twice in one forward pass: its weights would be "
                "drawn twice for the same example, but they are one coordinate of the "
                "hypothesis. Use --sampler functional (one draw per example, however often a "
                "weight is used), or certify with a compression method"
            )
        self.called.add(layer)
        if x.dim() == 0 or x.shape[0] != self.batch:
            lead = "a scalar" if x.dim() == 0 else f"leading dimension {x.shape[0]}"
            raise InvalidInputError(
                f"module {layer!r} receives input of shape {list(x.shape)} ({lead}) for a "
                f"batch of {self.batch} examples: its per-example weight draws would not be "
                "per example. Keep the batch as the first dimension through the network, or "
                "certify with a compression method"
            )


class GaussianModule(nn.Module):
    """Mean and log-σ parameters for a module's ``weight`` (and optional ``bias``).

    ``mode``, ``draw_key`` (per-example draws, :mod:`~pacbound.posterior.streams`) and
    ``generator`` (the sequential generator of ``"shared"`` training draws) are set by the
    network (``set_mode``) between passes; the model's own forward code cannot change them
    while a pass runs. Per-example noise is keyed by the drawn tensors' slot names (the
    original parameter names, :meth:`slot_name`), so the layers and the generic functional
    path draw the same noise for the same key.
    """

    layer_name: str = "<layer>"
    guard: ForwardGuard | None = None
    #: the bytes per-example weight tensors may take at once (``--max-memory``)
    max_memory: int = DEFAULT_MAX_MEMORY
    #: whether every per-example pass draws whole weights per example (the network checks
    #: the budget holds one example of it when it is built)
    budgeted: bool = False
    #: the drawn tensors' names on the original module (``{name}_mu``, ``{name}_log_sigma``)
    drawn: tuple[str, ...] = ("weight", "bias")
    _mode: SampleMode = "per_example"
    _generator: torch.Generator | None = None
    _draw_key: DrawKey | None = None
    #: the key of the running pass when none is set (derived from ``generator``)
    _call_key: DrawKey | None = None

    def _settable(self, what: str) -> None:
        if self.guard is not None and self.guard.running:
            raise InvalidInputError(
                f"the model's forward changes how layer {self.layer_name!r} draws its weights "
                f"(its {what}): the certificate's draws must be the ones pacbound makes"
            )

    @property
    def mode(self) -> SampleMode:
        return self._mode

    @mode.setter
    def mode(self, value: SampleMode) -> None:
        self._settable("sampling mode")
        self._mode = value

    @property
    def generator(self) -> torch.Generator | None:
        return self._generator

    @generator.setter
    def generator(self, value: torch.Generator | None) -> None:
        self._settable("random generator")
        self._generator = value

    @property
    def draw_key(self) -> DrawKey | None:
        return self._draw_key

    @draw_key.setter
    def draw_key(self, value: DrawKey | None) -> None:
        self._settable("random stream")
        self._draw_key = value

    def __init__(self, weight: Tensor, bias: Tensor | None, log_sigma_init: float) -> None:
        super().__init__()
        self.weight_mu = nn.Parameter(weight.detach().clone())
        self.weight_log_sigma = nn.Parameter(torch.full_like(weight, log_sigma_init))
        if bias is not None:
            self.bias_mu: nn.Parameter | None = nn.Parameter(bias.detach().clone())
            self.bias_log_sigma: nn.Parameter | None = nn.Parameter(
                torch.full_like(bias, log_sigma_init)
            )
        else:
            self.bias_mu = None
            self.bias_log_sigma = None
        self.mode = "per_example"
        self.generator: torch.Generator | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The layer's own forward, without module hooks: no user code may replace or
        rewrite a draw of the posterior. The guard records which layer is running. A
        per-example call without a key draws one from the generator for the call."""
        guard = self.guard
        derived = self._mode == "per_example" and self._draw_key is None and self._call_key is None
        if derived:
            self._call_key = DrawStream.from_generator(self._generator, "generator").next_pass()
        if guard is not None:
            guard.active.append(self.layer_name)
        try:
            return self.forward(*args, **kwargs)
        finally:
            if guard is not None:
                guard.active.pop()
            if derived:
                self._call_key = None

    def __getattr__(self, name: str) -> Any:
        if name in type(self).drawn:
            # The model reads the layer's tensor outside the layer's own forward (a raw op,
            # a tie): that use would compute with the checkpoint's point weights.
            raise InvalidInputError(
                f"the model reads {self.layer_name}.{name} outside that module's forward "
                "(a functional call or a tied use); every use of a weight must go through its "
                "module to be covered by the posterior. Use --sampler functional (every use "
                "sees the example's one draw), or certify with a compression method"
            )
        return super().__getattr__(name)

    def _enter(self, x: Tensor) -> None:
        if self.guard is not None:
            self.guard.enter(self.layer_name, x)

    def slot_name(self, attr: str) -> str:
        """The original parameter name of the drawn tensor ``attr`` (``"0.weight"``), which
        keys its noise; ``{layer_name}.{attr}`` for a layer built outside a network."""
        return self.__dict__.get("_slot_names", {}).get(attr, f"{self.layer_name}.{attr}")

    def set_slot_name(self, attr: str, name: str) -> None:
        self.__dict__.setdefault("_slot_names", {})[attr] = name

    def _group(self, attrs: tuple[str, ...]) -> str:
        """The key of tensors drawn together (a layer's weight and bias)."""
        return "|".join(self.slot_name(a) for a in attrs)

    def _example_noise(
        self, group: str, shapes: list[torch.Size], rows: int, first_row: int, like: Tensor
    ) -> list[Tensor]:
        """Standard normal noise ``(rows, *shape)`` per shape for the batch's examples
        ``first_row …``, keyed by the pass's :class:`~pacbound.posterior.streams.DrawKey`
        (the examples' indices in the data set) and ``group``."""
        key = self._draw_key or self._call_key
        if key is None:
            raise RuntimeError(f"layer {self.layer_name!r} draws per example without a key")
        noise = key.example_noise(group, shapes, key.first_example + first_row, rows, like)
        guard = self.guard
        if guard is not None and guard.perturb_rows is not None:
            perturbed = guard.perturb_rows[first_row : first_row + rows]
            if perturbed.shape[0] == rows:
                for n in noise:
                    n[perturbed.to(n.device)] += 1.0
        return noise

    def _draw_group(
        self, attrs: tuple[str, ...], rows: int, first_row: int = 0
    ) -> list[Tensor | None]:
        """Per-example draws μ + σ ⊙ ε of the tensors ``attrs`` (``None`` for an absent
        bias) for the batch's examples ``first_row …``, their noise keyed together."""
        present = [a for a in attrs if getattr(self, f"{a}_mu") is not None]
        mus = [getattr(self, f"{a}_mu") for a in present]
        noise = self._example_noise(
            self._group(tuple(present)), [m.shape for m in mus], rows, first_row, mus[0]
        )
        drawn = {
            a: scaled_noise(mu, torch.exp(getattr(self, f"{a}_log_sigma")), eps)
            for a, mu, eps in zip(present, mus, noise, strict=True)
        }
        return [drawn.get(a) for a in attrs]

    def _draws(self, mu: Tensor, log_sigma: Tensor, rows: int, *, first_row: int = 0) -> Tensor:
        """``rows`` per-example draws μ + σ ⊙ ε of one drawn tensor (``mu`` one of this
        layer's ``*_mu`` parameters) for the batch's examples ``first_row …``."""
        attr = next(n[: -len("_mu")] for n, p in self._own_parameters() if p is mu)
        noise = self._example_noise(self.slot_name(attr), [mu.shape], rows, first_row, mu)
        return scaled_noise(mu, torch.exp(log_sigma), noise[0])

    def _shared_draw(self, mu: Tensor, log_sigma: Tensor) -> Tensor:
        """One draw μ + σ ⊙ ε from the sequential generator (``"shared"`` training mode)."""
        return mu + torch.exp(log_sigma) * self._noise(mu.shape, mu)

    def _noise(self, shape: torch.Size | tuple[int, ...], like: Tensor) -> Tensor:
        """Standard normal noise from the sequential generator (training draws only)."""
        return torch.randn(shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def per_example_elements(self) -> int:
        """Elements of one example's drawn weights (what :func:`chunk_plan` budgets)."""
        return sum(p.numel() for name, p in self._own_parameters() if name.endswith("_mu"))

    def _own_parameters(self) -> list[tuple[str, Tensor]]:
        return list(self.named_parameters(recurse=False))

    def _plan(self, rows: int) -> int:
        """Examples evaluated together within the memory budget (:func:`chunk_plan`)."""
        mu = next(p for name, p in self._own_parameters() if name.endswith("_mu"))
        return chunk_plan(
            rows, self.per_example_elements(), mu.element_size(), self.max_memory, self.layer_name
        )


class GaussianLinear(GaussianModule):
    """A Linear layer with weights ~ N(μ, diag σ²), sampled per example (local reparam)."""

    def __init__(self, base: nn.Linear, log_sigma_init: float) -> None:
        super().__init__(base.weight, base.bias, log_sigma_init)
        self.in_features = base.in_features
        self.out_features = base.out_features

    def forward(self, x: Tensor) -> Tensor:
        self._enter(x)
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        if self.mode == "mean":
            return mean
        if x.dim() != 2 and self.mode == "per_example":
            return self._per_example_nd(x)
        # σ = exp(log σ) exactly as the KL computation takes it, then squared.
        var = F.linear(x * x, torch.exp(self.weight_log_sigma) ** 2)
        if self.bias_log_sigma is not None:
            var = var + torch.exp(self.bias_log_sigma) ** 2
        if self.mode == "shared":
            return mean + torch.sqrt(var) * self._noise(mean.shape, mean)
        # the pre-activation noise of every example (its own key: not a weight's noise)
        group = self._group(("weight", "bias") if self.bias_mu is not None else ("weight",))
        rows = int(mean.shape[0])
        noise = self._example_noise(f"{group}#pre-activation", [mean.shape[1:]], rows, 0, mean)
        return mean + torch.sqrt(var) * noise[0]

    def _per_example_nd(self, x: Tensor) -> Tensor:
        """One weight matrix (and bias) per example, shared by all positions of it."""
        if x.dim() < 2:
            raise InvalidInputError(
                f"module {self.layer_name!r} receives a 1-D input of shape {list(x.shape)}: "
                "there is no batch dimension to draw weights per example"
            )
        b = x.shape[0]
        flat = x.reshape(b, -1, x.shape[-1])
        # Examples in chunks, so that the per-example weights stay within the memory budget.
        step = self._plan(b)
        chunks = []
        for start in range(0, b, step):
            rows = min(step, b - start)
            weight, bias = self._draw_group(("weight", "bias"), rows, start)
            assert weight is not None
            out = torch.bmm(flat[start : start + rows], weight.transpose(1, 2))
            if bias is not None:
                out = out + bias.unsqueeze(1)
            chunks.append(out)
        return torch.cat(chunks).reshape(*x.shape[:-1], self.weight_mu.shape[0])

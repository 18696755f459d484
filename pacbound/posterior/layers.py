"""Layers whose weights are drawn from a diagonal Gaussian, independently per example.

Two sampling modes:

``"per_example"`` (certification). Every example gets its own independent weight draw:
  * :class:`GaussianLinear` on 2-D input (batch, features) uses the local reparameterization
    (Kingma, Salimans & Welling 2015): the pre-activation b_j ~ N(Σ_i x_i μ_ij, Σ_i x_i² σ²_ij),
    which is *exactly* the distribution under a fresh weight draw for that example, since
    output columns are independent. On N-D input (batch, positions…, features) one weight
    matrix is drawn per example and shared by all its positions (a batched matmul): local
    reparameterization there would draw per position, not per example (MATH.md §10).
  * :class:`GaussianConv2d` draws real per-example kernels and applies them with a grouped
    convolution. Local reparameterization is **not** exact for convolutions (spatial
    positions share weights), so it is never used there.

``"shared"`` (training only): one weight draw per mini-batch for convolutions (cheaper);
Linear layers still use the local reparameterization. Never used for certificates.

``"mean"``: deterministic forward with the posterior mean.

Inside a :class:`~pacbound.posterior.network.StochasticNetwork` every layer checks, on every
call, the two facts that make its draws per-example draws of one hypothesis (MATH.md §10):
its input's leading dimension is the network's batch (examples, not positions or a reshaped
batch), and it is called at most once per forward pass (a second call would draw its weights
a second time for the same example). Either failure refuses the model.

Which module types these layers replace, and when (exact type, no hooks, zero padding…), is
decided in one place: the layer-sampler registry :mod:`pacbound.posterior.samplers`. A new
exact sampler is a :class:`GaussianModule` subclass here plus one entry there.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pacbound.errors import InvalidInputError

SampleMode = Literal["per_example", "shared", "mean"]

#: Per-example weight matrices of a Linear on sequences are drawn for this many weight
#: elements at a time (64 MiB of float32), however large the batch.
PER_EXAMPLE_WEIGHT_ELEMENTS = 1 << 24


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

    ``mode`` and ``generator`` are set by the network (``set_mode``) between passes; the
    model's own forward code cannot change them while a pass runs.
    """

    layer_name: str = "<layer>"
    guard: ForwardGuard | None = None
    _mode: SampleMode = "per_example"
    _generator: torch.Generator | None = None

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
        rewrite a draw of the posterior. The guard records which layer is running."""
        guard = self.guard
        if guard is not None:
            guard.active.append(self.layer_name)
        try:
            return self.forward(*args, **kwargs)
        finally:
            if guard is not None:
                guard.active.pop()

    def __getattr__(self, name: str) -> Any:
        if name in ("weight", "bias"):
            # The model reads the layer's tensor outside the layer's own forward (a raw op,
            # a tie): that use would compute with the checkpoint's point weights.
            raise InvalidInputError(
                f"the model reads {self.layer_name}.{name} outside that module's forward "
                "(a functional call or a tied use); every use of a weight must go through its "
                "module to be covered by the posterior. Certify with a compression method"
            )
        return super().__getattr__(name)

    def _enter(self, x: Tensor) -> None:
        if self.guard is not None:
            self.guard.enter(self.layer_name, x)

    def _noise(
        self, shape: torch.Size | tuple[int, ...], like: Tensor, first_row: int = 0
    ) -> Tensor:
        """Standard normal noise whose leading dimension is the examples ``first_row``…"""
        noise = torch.randn(shape, generator=self.generator, device=like.device, dtype=like.dtype)
        guard = self.guard
        if guard is not None and guard.perturb_rows is not None and noise.dim() > 0:
            rows = guard.perturb_rows[first_row : first_row + noise.shape[0]]
            if rows.shape[0] == noise.shape[0]:
                noise[rows.to(noise.device)] += 1.0
        return noise


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
        return mean + torch.sqrt(var) * self._noise(mean.shape, mean)

    def _per_example_nd(self, x: Tensor) -> Tensor:
        """One weight matrix (and bias) per example, shared by all positions of it."""
        if x.dim() < 2:
            raise InvalidInputError(
                f"module {self.layer_name!r} receives a 1-D input of shape {list(x.shape)}: "
                "there is no batch dimension to draw weights per example"
            )
        b = x.shape[0]
        flat = x.reshape(b, -1, x.shape[-1])
        sigma = torch.exp(self.weight_log_sigma)
        # Examples in chunks, so that the per-example weights stay within a memory budget.
        step = max(1, PER_EXAMPLE_WEIGHT_ELEMENTS // self.weight_mu.numel())
        chunks = []
        for start in range(0, b, step):
            rows = min(step, b - start)
            noise = self._noise((rows, *self.weight_mu.shape), x, start)
            weights = self.weight_mu + sigma * noise
            out = torch.bmm(flat[start : start + rows], weights.transpose(1, 2))
            if self.bias_mu is not None and self.bias_log_sigma is not None:
                noise_b = self._noise((rows, *self.bias_mu.shape), x, start)
                bias = self.bias_mu + torch.exp(self.bias_log_sigma) * noise_b
                out = out + bias.unsqueeze(1)
            chunks.append(out)
        return torch.cat(chunks).reshape(*x.shape[:-1], self.weight_mu.shape[0])


class GaussianConv2d(GaussianModule):
    """A Conv2d with kernels ~ N(μ, diag σ²): real per-example draws via grouped conv.

    Zero padding only (the registry refuses other padding modes before building one)."""

    def __init__(self, base: nn.Conv2d, log_sigma_init: float) -> None:
        super().__init__(base.weight, base.bias, log_sigma_init)
        self.in_channels = base.in_channels
        self.out_channels = base.out_channels
        self.kernel_size = base.kernel_size
        self.stride = base.stride
        self.padding = base.padding
        self.dilation = base.dilation
        self.groups = base.groups

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def forward(self, x: Tensor) -> Tensor:
        self._enter(x)
        if self.mode == "mean":
            return self._conv(x, self.weight_mu, self.bias_mu, self.groups)
        sigma_w = torch.exp(self.weight_log_sigma)
        if self.mode == "shared":
            weight = self.weight_mu + sigma_w * self._noise(self.weight_mu.shape, x)
            bias = None
            if self.bias_mu is not None and self.bias_log_sigma is not None:
                bias = self.bias_mu + torch.exp(self.bias_log_sigma) * self._noise(
                    self.bias_mu.shape, x
                )
            return self._conv(x, weight, bias, self.groups)
        # Per-example kernels: B independent draws, applied with a grouped convolution.
        if x.dim() != 4:
            raise InvalidInputError(
                f"module {self.layer_name!r} receives input of shape {list(x.shape)}; "
                "per-example kernels need a batched (B, C, H, W) input"
            )
        b = x.shape[0]
        weights = self.weight_mu + sigma_w * self._noise((b, *self.weight_mu.shape), x)
        out_ch = self.weight_mu.shape[0]
        stacked = weights.reshape(b * out_ch, *self.weight_mu.shape[1:])
        bias_stacked = None
        if self.bias_mu is not None and self.bias_log_sigma is not None:
            biases = self.bias_mu + torch.exp(self.bias_log_sigma) * self._noise((b, out_ch), x)
            bias_stacked = biases.reshape(b * out_ch)
        grouped = x.reshape(1, b * x.shape[1], *x.shape[2:])
        out = self._conv(grouped, stacked, bias_stacked, self.groups * b)
        return out.reshape(b, out_ch, *out.shape[2:])

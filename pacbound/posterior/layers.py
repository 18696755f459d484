"""Layers whose weights are drawn from a diagonal Gaussian, independently per example.

Two sampling modes:

``"per_example"`` (certification). Every example gets its own independent weight draw:
  * :class:`GaussianLinear` uses the local reparameterization (Kingma, Salimans & Welling
    2015): the pre-activation b_j ~ N(Σ_i x_i μ_ij, Σ_i x_i² σ²_ij), which is *exactly* the
    distribution under a fresh weight draw for that example, since output columns are
    independent.
  * :class:`GaussianConv2d` draws real per-example kernels and applies them with a grouped
    convolution. Local reparameterization is **not** exact for convolutions (spatial
    positions share weights), so it is never used there.

``"shared"`` (training only): one weight draw per mini-batch for convolutions (cheaper);
Linear layers still use the local reparameterization. Never used for certificates.

``"mean"``: deterministic forward with the posterior mean.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SampleMode = Literal["per_example", "shared", "mean"]


class _GaussianModule(nn.Module):
    """Mean and log-σ parameters for a module's ``weight`` (and optional ``bias``)."""

    mode: SampleMode

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

    def _noise(self, shape: torch.Size | tuple[int, ...], like: Tensor) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=like.device, dtype=like.dtype)


class GaussianLinear(_GaussianModule):
    """A Linear layer with weights ~ N(μ, diag σ²), sampled per example (local reparam)."""

    def __init__(self, base: nn.Linear, log_sigma_init: float) -> None:
        super().__init__(base.weight, base.bias, log_sigma_init)

    def forward(self, x: Tensor) -> Tensor:
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        if self.mode == "mean":
            return mean
        # σ = exp(log σ) exactly as the KL computation takes it, then squared.
        var = F.linear(x * x, torch.exp(self.weight_log_sigma) ** 2)
        if self.bias_log_sigma is not None:
            var = var + torch.exp(self.bias_log_sigma) ** 2
        return mean + torch.sqrt(var) * self._noise(mean.shape, mean)


class GaussianConv2d(_GaussianModule):
    """A Conv2d with kernels ~ N(μ, diag σ²): real per-example draws via grouped conv."""

    def __init__(self, base: nn.Conv2d, log_sigma_init: float) -> None:
        if base.padding_mode != "zeros":
            raise ValueError("only zero padding is supported for Gaussian convolutions")
        super().__init__(base.weight, base.bias, log_sigma_init)
        self.stride = base.stride
        self.padding = base.padding
        self.dilation = base.dilation
        self.groups = base.groups

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def forward(self, x: Tensor) -> Tensor:
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

"""Convolutions with kernels drawn from a diagonal Gaussian, independently per example.

:class:`GaussianConv` serves ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d``, groups and
depthwise included: in ``"per_example"`` mode every example gets its own kernels (and bias),
and the batch is applied as one grouped convolution of ``groups × examples`` groups over the
examples' channels stacked into one. Example j's input channels then meet only example j's
kernels, group by group, so each example is convolved with its own draw exactly. Local
reparameterization is **not** exact for convolutions (spatial positions share weights), so it
is never used here (MATH.md §3, §10).

``"shared"`` (training only): one kernel draw per call. ``"mean"``: the posterior mean.
Zero padding only (the registry refuses other padding modes before building one).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.layers import GaussianModule

_CONV: dict[int, Callable[..., Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class GaussianConv(GaussianModule):
    """A ConvNd (N = 1, 2, 3) with kernels ~ N(μ, diag σ²), drawn per example."""

    budgeted = True

    def __init__(self, base: nn.Conv1d | nn.Conv2d | nn.Conv3d, log_sigma_init: float) -> None:
        super().__init__(base.weight, base.bias, log_sigma_init)
        self.dims = base.weight.dim() - 2
        self.in_channels = base.in_channels
        self.out_channels = base.out_channels
        self.kernel_size = base.kernel_size
        self.stride = base.stride
        self.padding = base.padding
        self.dilation = base.dilation
        self.groups = base.groups

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
        conv = _CONV[self.dims]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def forward(self, x: Tensor) -> Tensor:
        self._enter(x)
        if self.mode == "mean":
            return self._conv(x, self.weight_mu, self.bias_mu, self.groups)
        if self.mode == "shared":
            weight = self._shared_draw(self.weight_mu, self.weight_log_sigma)
            bias = None
            if self.bias_mu is not None and self.bias_log_sigma is not None:
                bias = self._shared_draw(self.bias_mu, self.bias_log_sigma)
            return self._conv(x, weight, bias, self.groups)
        if x.dim() != self.dims + 2:
            raise InvalidInputError(
                f"module {self.layer_name!r} receives input of shape {list(x.shape)}; "
                f"per-example kernels need a batched (B, C, {self.dims} spatial) input"
            )
        b = int(x.shape[0])
        # The whole batch's kernels at once when the budget holds them, else chunks of
        # examples (the draws are the same either way).
        step = self._plan(b)
        outs = [self._chunk(x[start : start + step], start) for start in range(0, b, step)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _chunk(self, x: Tensor, first: int) -> Tensor:
        """Examples ``first``… of the batch (``x``), each with its own kernels."""
        b, out_ch = int(x.shape[0]), self.weight_mu.shape[0]
        weights, biases = self._draw_group(("weight", "bias"), b, first)
        assert weights is not None
        stacked = weights.reshape(b * out_ch, *self.weight_mu.shape[1:])
        bias_stacked = None if biases is None else biases.reshape(b * out_ch)
        grouped = x.reshape(1, b * x.shape[1], *x.shape[2:])
        out = self._conv(grouped, stacked, bias_stacked, self.groups * b)
        return out.reshape(b, out_ch, *out.shape[2:])


#: The name the Conv2d sampler had before it served every N.
GaussianConv2d = GaussianConv

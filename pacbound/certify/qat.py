"""Quantization-aware fine-tuning (QAT) during the compression search: the loss on a fixed,
seeded subset of the training sample, as a function of the coded vector."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from pacbound.certify.occam_options import SEED_OFFSETS, CompressionOptions
from pacbound.compressors import Codebook, quantization_aware_finetune
from pacbound.parallel.training import batch_share, gradient_mean, shared_loss


def unflatten(module: nn.Module, theta: Tensor) -> dict[str, Tensor]:
    """``theta`` cut into ``module``'s parameters (in ``named_parameters`` order)."""
    params, offset = {}, 0
    for name, p in module.named_parameters():
        params[name] = theta[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return params


def qat_loss(
    module: nn.Module,
    to_theta: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    options: CompressionOptions,
    device: torch.device,
) -> Callable[[Tensor], Tensor]:
    """Full-batch cross-entropy on the seeded QAT subset of (x, y), as a function of the
    coded vector v (θ = ``to_theta(v)``).

    Under torchrun each rank holds (and reads) only its share of the subset: the loss is the
    whole subset's mean (summed over ranks, the same value on every rank) and the gradient
    of v is averaged over ranks on the way back, so every rank takes the same fine-tuning
    steps. One process is bit for bit the one-process loss; at world size > 1 the tuned
    vector may differ from it by floating-point reduction order.
    """
    gen = torch.Generator().manual_seed(options.seed + SEED_OFFSETS["qat_subset"])
    idx = torch.randperm(x.shape[0], generator=gen)[: options.qat_examples]
    share = batch_share(idx)
    qx, qy = x[share.rows].to(device), y[share.rows].to(device)

    def loss(v: Tensor) -> Tensor:
        v = gradient_mean(v)
        if share.empty:  # no rows here, but v stays in the graph: its backward collective runs
            return shared_loss(v.sum() * 0.0, share, like=v)
        out: Tensor = functional_call(module, unflatten(module, to_theta(v)), (qx,))
        return shared_loss(F.cross_entropy(out, qy), share, like=v)

    return loss


def finetune(
    v: Tensor, loss: Callable[[Tensor], Tensor], codebook: Codebook, options: CompressionOptions
) -> Tensor:
    """``v`` after ``options.qat_steps`` straight-through steps against ``codebook``."""
    if options.qat_steps == 0:
        return v
    return quantization_aware_finetune(
        v, loss, codebook, steps=options.qat_steps, lr=options.qat_lr
    )

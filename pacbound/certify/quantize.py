"""``certify --method quantize``: post-hoc quantization of the checkpoint's weights (Zhou et
al. 2019).

The choose phase: for each predeclared L, two candidates, one codebook shared by every
weight and one codebook per parameter tensor (optionally with an exact zero level, and
quantization-aware fine-tuning), each scored by the certify phase
(:mod:`pacbound.certify.occam`). Both are codewords of the one prefix-free code (the format
version in the header tells them apart), so picking the better is paid in the code length.
The shared candidate is the first, so a model on which it wins (or ties) keeps its message.

With quantized weights the checkpoint's BatchNorm statistics describe another network (a
small MNIST ResNet at L = 8: 4 % → 32 % training error), so they are re-estimated with the
quantized weights on a seeded subset of the sample (:data:`RECALIBRATION_EXAMPLES`, the
QAT subset's permutation) before the buffers are coded: a choice made on S, paid in the code
length like every buffer. A model without BatchNorm is untouched.

The factory only supplies the architecture for decoding: the message codes every parameter
and floating buffer, so θ₀ and the seed play no part.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pacbound.certify.common import ProgressFactory, Timer, no_progress
from pacbound.certify.method import Certificate, RunInputs
from pacbound.certify.occam import Choice, Search, certify_message, check_data
from pacbound.certify.occam_method import OccamMethod
from pacbound.certify.occam_options import SEED_OFFSETS, CompressionOptions
from pacbound.certify.qat import qat_loss, unflatten
from pacbound.compressors import (
    DirectQuantizeCompressor,
    ModelFactory,
    dequantize,
    parameter_vector,
    quantization_aware_finetune,
    quantize,
)
from pacbound.compressors.base import buffer_vector, load_buffer_vector
from pacbound.compressors.buffers import recalibrate_batchnorm
from pacbound.compressors.quantized import CodebookScope, tensor_sizes

#: At most this many examples (a seeded subset of S) re-estimate the BatchNorm statistics of
#: a quantized candidate.
RECALIBRATION_EXAMPLES = 10_000


def _load_flat(module: nn.Module, flat: Tensor) -> None:
    with torch.no_grad():
        for p, value in zip(module.parameters(), unflatten(module, flat).values(), strict=True):
            p.copy_(value)


def _recalibration_inputs(x: Tensor, options: CompressionOptions) -> Tensor:
    gen = torch.Generator().manual_seed(options.seed + SEED_OFFSETS["qat_subset"])
    return x[torch.randperm(x.shape[0], generator=gen)[:RECALIBRATION_EXAMPLES]]


def choose_quantized(
    model: nn.Module,
    factory: ModelFactory,
    x: Tensor,
    y: Tensor,
    *,
    options: CompressionOptions,
    device: torch.device | None = None,
    progress: ProgressFactory = no_progress,
) -> tuple[bytes, Choice]:
    """Quantize ``model``'s weights for each L of ``options.levels`` with a shared and with
    per-tensor codebooks (optional exact zero level and QAT; BatchNorm statistics
    re-estimated), code, score; the best message (the smallest bound) and the record of the
    search."""
    dev = device or torch.device("cpu")
    timer = Timer()
    model = model.to(dev).eval()
    DirectQuantizeCompressor(factory, levels=2, device=dev)._check_model(model)
    theta = parameter_vector(model)
    loss = qat_loss(model, lambda v: v, x, y, options, dev)
    recalibration = _recalibration_inputs(x, options)
    scopes = list(CodebookScope) if len(tensor_sizes(model)) > 1 else [CodebookScope.SHARED]
    search = Search(x, y, options=options, device=dev)
    advance = progress("quantizing", len(options.levels_grid) * len(scopes))
    for levels in options.levels_grid:
        for scope in scopes:
            coder = DirectQuantizeCompressor(
                factory,
                levels=levels,
                codebook=options.codebook,
                precision=options.precision,
                zero_level=options.zero_level,
                scope=scope,
                seed=options.seed,
                device=dev,
            )
            with timer.phase("quantize"):
                codebook = coder.fit_codebooks(model, theta)
                tuned = factory(options.seed).to(dev)
                if options.qat_steps > 0:
                    theta_q = quantization_aware_finetune(
                        theta, loss, codebook, steps=options.qat_steps, lr=options.qat_lr
                    )
                else:
                    theta_q = theta
                decoded = dequantize(quantize(theta_q, codebook), codebook)
                _load_flat(tuned, torch.from_numpy(decoded).to(theta.dtype).to(dev))
                load_buffer_vector(tuned, buffer_vector(model).to(dev))
                recalibrate_batchnorm(tuned, recalibration, batch_size=options.batch_size)
                message = coder.compress(tuned, codebook=codebook)
            with timer.phase("evaluate"):
                search.score(message, coder)
            advance(1)
    return search.chosen("checkpoint", timer)


def certify_quantized(
    model: nn.Module,
    factory: ModelFactory,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    options: CompressionOptions,
    device: torch.device | None = None,
    progress: ProgressFactory = no_progress,
) -> Certificate:
    """:func:`choose_quantized`, then the certify phase on the chosen message (without
    statements about a checkpoint): the library entry point."""
    check_data(x, y, num_classes)
    payload, choice = choose_quantized(
        model, factory, x, y, options=options, device=device, progress=progress
    )
    return certify_message(
        payload, factory, x, y, options=options, seed=None, choice=choice, device=device
    )


class QuantizeMethod(OccamMethod):
    name = "quantize"
    description = "Occam bound for the checkpoint's weights quantized post hoc and coded"
    own_parameters = ("zero_level",)
    classifier = "decoded quantized model"

    def choose(
        self, inputs: RunInputs, factory: ModelFactory, options: CompressionOptions
    ) -> tuple[bytes, Choice]:
        return choose_quantized(
            inputs.loaded.module,
            factory,
            inputs.data.x,
            inputs.data.y,
            options=options,
            device=inputs.device,
            progress=inputs.progress,
        )


QUANTIZE = QuantizeMethod()

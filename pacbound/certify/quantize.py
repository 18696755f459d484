"""``certify --method quantize``: post-hoc quantization of the checkpoint's weights (Zhou et
al. 2019).

The choose phase: one shared codebook per predeclared L (optionally with an exact zero level,
and quantization-aware fine-tuning), the message, scored by the certify phase
(:mod:`pacbound.certify.occam`). The factory only supplies the architecture for decoding: the
message codes every parameter and floating buffer, so θ₀ and the seed play no part.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pacbound.certify.common import ProgressFactory, Timer, no_progress
from pacbound.certify.method import Certificate, RunInputs
from pacbound.certify.occam import Choice, Search, certify_message, check_data
from pacbound.certify.occam_method import OccamMethod
from pacbound.certify.occam_options import CompressionOptions
from pacbound.certify.qat import finetune, qat_loss, unflatten
from pacbound.compressors import DirectQuantizeCompressor, ModelFactory, parameter_vector
from pacbound.compressors.base import buffer_vector, load_buffer_vector


def _load_flat(module: nn.Module, flat: Tensor) -> None:
    with torch.no_grad():
        for p, value in zip(module.parameters(), unflatten(module, flat).values(), strict=True):
            p.copy_(value)


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
    """Quantize ``model``'s weights for each L of ``options.levels`` (one shared codebook,
    optional exact zero level and QAT), code, score; the best message (the smallest bound)
    and the record of the search."""
    dev = device or torch.device("cpu")
    timer = Timer()
    model = model.to(dev).eval()
    DirectQuantizeCompressor(factory, levels=2, device=dev)._check_model(model)
    theta = parameter_vector(model)
    loss = qat_loss(model, lambda v: v, x, y, options, dev)
    search = Search(x, y, options=options, device=dev)
    advance = progress("quantizing", len(options.levels_grid))
    for levels in options.levels_grid:
        coder = DirectQuantizeCompressor(
            factory,
            levels=levels,
            codebook=options.codebook,
            precision=options.precision,
            zero_level=options.zero_level,
            seed=options.seed,
            device=dev,
        )
        with timer.phase("quantize"):
            codebook = coder.fit_codebook(theta)
            tuned = factory(options.seed).to(dev)
            _load_flat(tuned, finetune(theta, loss, codebook, options))
            load_buffer_vector(tuned, buffer_vector(model).to(dev))
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

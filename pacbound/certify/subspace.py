"""``certify --method subspace``: train w in a random subspace, quantize, code (Lotfi et al. 2022).

The choose phase: θ = θ₀ + P w with θ₀ = ``factory(seed)``'s initialisation (or the weights
of an init file fixed before the data, :class:`pacbound.certify.factories.InitFileFactory`)
and P regenerated from the same seed; w is trained from 0, or from the least-squares
projection of the checkpoint's θ − θ₀ (``--subspace-init checkpoint``); for each
predeclared (d, L): a codebook with L levels, optional quantization-aware fine-tuning, the
message, scored by the certify phase (:mod:`pacbound.certify.occam`). The search is paid in
the code length.

**Seed and θ₀.** ``factory(seed)`` must build the architecture deterministically from the
integer seed (wrap a plain builder with :func:`pacbound.certify.factories.seeded_factory`).
The message records the seed; the decoder calls ``factory(seed)`` to regenerate θ₀ and P.
:func:`choose_subspace` checks that two calls give the same weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pacbound.certify.common import ProgressFactory, Timer, no_progress
from pacbound.certify.method import Certificate, RunInputs
from pacbound.certify.occam import Choice, Search, certify_message, check_data
from pacbound.certify.occam_method import OccamMethod
from pacbound.certify.occam_options import SEED_OFFSETS, CompressionOptions, SubspaceStart
from pacbound.certify.qat import finetune, qat_loss
from pacbound.compressors import (
    ModelFactory,
    SubspaceModel,
    SubspaceQuantizeCompressor,
    init_from_checkpoint_lstsq,
    parameter_vector,
    train_subspace,
)
from pacbound.compressors.projectors import Projector, check_dimensions
from pacbound.errors import InvalidInputError


def _check_factory(factory: ModelFactory, seed: int) -> nn.Module:
    first, second = factory(seed), factory(seed)
    if not torch.equal(parameter_vector(first), parameter_vector(second)):
        raise InvalidInputError(
            "the architecture factory is not deterministic in its seed (two calls with "
            f"seed {seed} gave different weights), so the decoder could not regenerate θ₀; "
            "wrap the builder with seeded_factory()"
        )
    return first


def _affine(theta0: Tensor, projector: Projector) -> Callable[[Tensor], Tensor]:
    """w ↦ θ₀ + P w."""
    return lambda w: theta0 + projector.matvec(w)


def _coder(
    factory: ModelFactory, d: int, levels: int, options: CompressionOptions, dev: torch.device
) -> SubspaceQuantizeCompressor:
    return SubspaceQuantizeCompressor(
        factory,
        d=d,
        levels=levels,
        projector=options.projector,
        codebook=options.codebook,
        precision=options.precision,
        seed=options.seed,
        device=dev,
    )


def _train(
    model: SubspaceModel,
    base: SubspaceQuantizeCompressor,
    x: Tensor,
    y: Tensor,
    options: CompressionOptions,
    checkpoint_model: nn.Module | None,
    hook: ProgressFactory,
) -> Tensor:
    """w trained with ``options.training`` from 0 or from the checkpoint's projection."""
    recipe = options.training
    w0 = None
    if checkpoint_model is not None:
        base._check_model(checkpoint_model)
        delta_theta = parameter_vector(checkpoint_model).to(base.device) - model.initial_theta
        w0 = init_from_checkpoint_lstsq(delta_theta, model.projector)
    advance = hook(f"training w (d={base.d})", recipe.epochs * int(x.shape[0]))
    w = train_subspace(
        model.module,
        model.projector,
        x,
        y,
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        seed=options.seed + SEED_OFFSETS["training"],
        optimizer=recipe.optimizer,
        w0=w0,
        lr_schedule=recipe.lr_schedule,
    )
    advance(recipe.epochs * int(x.shape[0]))
    return w


def choose_subspace(
    factory: ModelFactory,
    x: Tensor,
    y: Tensor,
    *,
    options: CompressionOptions,
    checkpoint_model: nn.Module | None = None,
    device: torch.device | None = None,
    progress: ProgressFactory = no_progress,
) -> tuple[bytes, Choice]:
    """Train w in a random subspace of ``factory(options.seed)``, quantize, code; the best
    message (the smallest bound) and the record of the search.

    For each d of ``options.d``: w starts at 0 (or at the least-squares projection of
    ``checkpoint_model``'s θ − θ₀) and is trained with ``options.training`` on (x, y); for
    each L of ``options.levels``: codebook, QAT (``options.qat_steps``), message, scored on
    all of (x, y).
    """
    dev = device or torch.device("cpu")
    timer = Timer()
    reference = _check_factory(factory, options.seed)
    D = sum(p.numel() for p in reference.parameters())
    for d in options.d_grid:
        check_dimensions(D, d)
    search = Search(x, y, options=options, device=dev)
    for d in options.d_grid:
        base = _coder(factory, d, options.levels_grid[0], options, dev)
        model = base.subspace_model()
        with timer.phase("training"):
            w = _train(model, base, x, y, options, checkpoint_model, progress)
        model.module.eval()
        projector = model.projector
        loss = qat_loss(model.module, _affine(model.initial_theta, projector), x, y, options, dev)
        for levels in options.levels_grid:
            coder = _coder(factory, d, levels, options, dev)
            with timer.phase("quantize"):
                codebook = coder.fit_codebook(w)
                wq = finetune(w, loss, codebook, options)
                tuned = SubspaceModel(model.module, projector, wq)
                message = coder.compress(tuned, codebook=codebook)
            with timer.phase("evaluate"):
                search.score(message, coder)
    start = "zero" if checkpoint_model is None else "checkpoint-lstsq"
    return search.chosen(start, timer)


def certify_subspace(
    factory: ModelFactory,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    options: CompressionOptions,
    checkpoint_model: nn.Module | None = None,
    device: torch.device | None = None,
    progress: ProgressFactory = no_progress,
) -> Certificate:
    """:func:`choose_subspace`, then the certify phase on the chosen message (without
    statements about a checkpoint): the library entry point."""
    check_data(x, y, num_classes)
    payload, choice = choose_subspace(
        factory,
        x,
        y,
        options=options,
        checkpoint_model=checkpoint_model,
        device=device,
        progress=progress,
    )
    return certify_message(
        payload, factory, x, y, options=options, seed=options.seed, choice=choice, device=device
    )


class SubspaceMethod(OccamMethod):
    name = "subspace"
    description = "Occam bound for a model trained in a random subspace, quantized and coded"
    own_parameters = (
        "d",
        "projector",
        "subspace_epochs",
        "subspace_lr",
        "subspace_batch_size",
        "subspace_optimizer",
        "subspace_lr_schedule",
        "subspace_init",
        "init",
    )
    classifier = "decoded subspace model"

    def choose(
        self, inputs: RunInputs, factory: ModelFactory, options: CompressionOptions
    ) -> tuple[bytes, Choice]:
        start = options.start is SubspaceStart.CHECKPOINT
        return choose_subspace(
            factory,
            inputs.data.x,
            inputs.data.y,
            options=options,
            checkpoint_model=inputs.loaded.module if start else None,
            device=inputs.device,
            progress=inputs.progress,
        )


SUBSPACE = SubspaceMethod()

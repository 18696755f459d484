"""The click options of the PAC-Bayes (Gaussian posterior) side of ``pacbound certify``.

Declared here so that ``certify_cmd`` stays a thin command; what each option does, and
when it applies, is the Gaussian method's (:mod:`pacbound.certify.gaussian`: its
``options(params)`` reads them, its ``parameters`` say when they apply).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pacbound.cli.options import FLOAT, INT
from pacbound.posterior.families import FAMILIES

F = TypeVar("F", bound=Callable[..., Any])


#: The options, in --help order.
PAC_BAYES_OPTIONS = (
    click.option(
        "--prior",
        type=click.Choice(["init", "zero", "data"]),
        default="init",
        show_default=True,
        help="Prior mean: the --init weights, zero, or trained on a seeded prior split of --data.",
    ),
    click.option(
        "--prior-fraction",
        type=FLOAT,
        default=0.5,
        show_default=True,
        help="With --prior data: share of --data used to train the prior mean.",
    ),
    click.option(
        "--prior-epochs",
        type=INT,
        default=10,
        show_default=True,
        help="With --prior data: SGD epochs on the prior split.",
    ),
    click.option(
        "--prior-lr",
        type=FLOAT,
        default=0.01,
        show_default=True,
        help="With --prior data: SGD learning rate (momentum 0.95, batch 250).",
    ),
    click.option(
        "--prior-lr-schedule",
        type=click.Choice(["cosine", "constant"]),
        default="cosine",
        show_default=True,
        help="With --prior data: learning-rate schedule (cosine decays to 0 over all steps).",
    ),
    click.option(
        "--prior-augment-shift",
        type=INT,
        default=0,
        show_default=True,
        metavar="PIXELS",
        help="With --prior data and image inputs: shift each prior-training image by a random "
        "offset of up to PIXELS (S_prior only; the bound part is never augmented).",
    ),
    click.option(
        "--prior-scales",
        default="1e-6:1:6001",
        show_default=True,
        metavar="LOW:HIGH:COUNT|S1,S2,…",
        help="Grid of prior standard deviations; the choice costs ln(COUNT) nats.",
    ),
    click.option(
        "--posterior",
        type=click.Choice(list(FAMILIES)),
        default=next(iter(FAMILIES)),
        show_default=True,
        help="; ".join(f"{name}: {fam.description}" for name, fam in FAMILIES.items()) + ".",
    ),
    click.option(
        "--sampler",
        type=click.Choice(["auto", "layers", "functional"]),
        default="auto",
        show_default=True,
        help="How per-example weight draws are made. layers: exact fast samplers per layer "
        "type (Linear, Conv1d/2d/3d, Embedding, LayerNorm/GroupNorm/BatchNorm affine; other "
        "parameters, ties and reuse refused); functional: the whole parameter vector drawn per "
        "example, each example evaluated alone (torch.func.vmap; any module, ties included; "
        "memory ∝ batch × parameters, chunked to --max-memory); auto: layers when every "
        "parameter-holding module has a layer sampler and nothing is tied or reused, "
        "functional otherwise (always for a .pt2 program).",
    ),
    click.option(
        "--max-memory",
        default="auto",
        show_default=True,
        metavar="SIZE",
        help="Memory for per-example weight tensors (e.g. 2GiB, 512MB): examples are drawn in "
        "chunks within it. auto: a quarter of the device's memory (RAM on a CPU). A budget "
        "too small for one example says the smallest one that works. --method marginal: the "
        "budget of its n×n matrices; a larger n is refused before any work, naming the "
        "largest n that fits.",
    ),
    click.option(
        "--posterior-epochs",
        type=INT,
        default=10,
        show_default=True,
        help="diagonal: training epochs.",
    ),
    click.option(
        "--posterior-optimizer",
        type=click.Choice(["sgd", "adam"]),
        default="sgd",
        show_default=True,
        help="diagonal: optimizer of the means (SGD with momentum 0.9, or Adam).",
    ),
    click.option(
        "--posterior-lr",
        type=FLOAT,
        default=1e-3,
        show_default=True,
        help="diagonal: learning rate of the means.",
    ),
    click.option(
        "--keep-best/--keep-last",
        default=True,
        show_default=True,
        help="diagonal: keep the epoch (0 = before training) with the smallest estimated bound "
        "(free: PAC-Bayes holds for every posterior; the certificate's draws are fresh).",
    ),
    click.option(
        "--sigma-lr",
        type=FLOAT,
        default=1e-2,
        show_default=True,
        help="diagonal: Adam learning rate of log σ and log σ_prior.",
    ),
    click.option(
        "--objective",
        type=click.Choice(["kl", "quad"]),
        default="kl",
        show_default=True,
        help="diagonal: bound form used as the training objective.",
    ),
    click.option(
        "--p-min",
        type=FLOAT,
        default=0.5,
        show_default=True,
        help="diagonal: bounded cross-entropy floor; 0.5 makes it an upper bound of the 0-1 loss.",
    ),
    click.option(
        "--mc-passes",
        type=INT,
        default=5,
        show_default=True,
        help="Monte-Carlo passes K: n·K independent per-example weight draws.",
    ),
    click.option(
        "--mc-draws",
        type=click.Choice(["auto", "per-example", "per-batch"]),
        default="auto",
        show_default=True,
        help="How the Monte-Carlo risk draws from Q. per-example: a fresh draw for every "
        "example (n·K draws); per-batch: one draw per batch of B examples, B the largest "
        "divisor of n not above --batch-size (K·n/B draws: a B times larger slack); auto: "
        "per-example unless one batch's per-example draws exceed --max-memory.",
    ),
    click.option(
        "--mc-delta",
        type=FLOAT,
        default=None,
        help="Part of --delta for the Monte-Carlo bound (default δ/5).",
    ),
    click.option(
        "--save-posterior",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Save the posterior (means, σ, prior) as safetensors for re-checking.",
    ),
)


def pac_bayes_options(func: F) -> F:
    """--prior …, --posterior …, --mc-passes, --mc-draws, --mc-delta, --save-posterior."""
    for decorator in reversed(PAC_BAYES_OPTIONS):
        func = decorator(func)
    return func

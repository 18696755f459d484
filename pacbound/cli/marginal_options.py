"""The click options of ``certify --method marginal`` (the marginal-likelihood certificate).

What each option does, and when it applies, is the marginal method's
(:mod:`pacbound.certify.marginal_method`: its ``options(params)`` reads them, its
``parameters`` say when they apply). ``--max-memory`` is shared with the Gaussian method
(:mod:`pacbound.cli.pac_bayes_options`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pacbound.certify.marginal_options import DEFAULTS, KERNELS
from pacbound.cli.options import FLOAT, INT

F = TypeVar("F", bound=Callable[..., Any])

MARGINAL_OPTIONS = (
    click.option(
        "--kernel",
        type=click.Choice(list(KERNELS)),
        default="relu",
        show_default=True,
        help="marginal: the prior's kernel. relu/erf: the NNGP kernel of a fully connected "
        "network of --kernel-depth hidden layers; conv-relu: of a ReLU CNN; monte-carlo: the "
        "covariance of the outputs of --kernel-draws random initialisations of --arch.",
    ),
    click.option(
        "--kernel-depth",
        type=INT,
        default=None,
        metavar="N",
        help="marginal: hidden layers of the analytic kernel (default: the hidden list of "
        "--arch mlp --arch-kwargs).",
    ),
    click.option(
        "--sigma-w",
        default=DEFAULTS["sigma_w"],
        show_default=True,
        metavar="S|S1,S2,…",
        help="marginal: weight standard deviation σ_w (a weight is N(0, σ_w²/fan-in)); a list "
        "is a grid, paid by a union bound (each point δ/|grid|).",
    ),
    click.option(
        "--sigma-b",
        default=DEFAULTS["sigma_b"],
        show_default=True,
        metavar="S|S1,S2,…",
        help="marginal: bias standard deviation σ_b; a list is a grid (with --sigma-w's).",
    ),
    click.option(
        "--num-classes",
        type=INT,
        default=None,
        metavar="C",
        help="marginal: the number of classes C (the prior has C GPs), fixed before the labels "
        "are read; default: the targets of --label-map, or with --kernel monte-carlo the "
        "output width of --arch. Never taken from the labels of --data.",
    ),
    click.option(
        "--jitter",
        "jitters",  # a grid, checked by the marginal method (not preflight's single value)
        default=DEFAULTS["jitter"],
        show_default=True,
        metavar="J|J1,J2,…",
        help="marginal: white noise of this variance added to the prior (K + jitter·I): part "
        "of the certified prior, not a numerical fudge. A list is a grid (with --sigma-w's "
        "and --sigma-b's), paid by the union bound; a point whose kernel is not positive "
        "definite gives no certificate but still costs its share of δ.",
    ),
    click.option(
        "--kernel-filter-size",
        type=INT,
        default=DEFAULTS["filter_size"],
        show_default=True,
        help="marginal, --kernel conv-relu: filter size of every convolution (odd; the "
        "network ends in global average pooling and a dense readout).",
    ),
    click.option(
        "--kernel-draws",
        type=INT,
        default=DEFAULTS["kernel_draws"],
        show_default=True,
        metavar="M",
        help="marginal, --kernel monte-carlo: random initialisations of --arch, seeded from "
        "--seed only (never from the data).",
    ),
    click.option(
        "--is-samples",
        type=INT,
        default=DEFAULTS["is_samples"],
        show_default=True,
        help="marginal: importance-sampling draws of the certified lower bound on P(U).",
    ),
    click.option(
        "--is-delta",
        type=FLOAT,
        default=None,
        help="marginal: part of --delta for the importance-sampling lower bound on P(U) "
        "(default δ/2).",
    ),
    click.option(
        "--save-kernel",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="marginal: save the chosen kernel (JSON) for verify.",
    ),
)


def marginal_options(func: F) -> F:
    """--kernel, --kernel-depth, --sigma-w, --sigma-b, --num-classes, --jitter,
    --kernel-filter-size, --kernel-draws, --is-samples, --is-delta, --save-kernel."""
    for decorator in reversed(MARGINAL_OPTIONS):
        func = decorator(func)
    return func

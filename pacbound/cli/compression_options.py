"""The click options of the compression methods (``--method subspace|quantize``), shared by
``pacbound certify`` and ``pacbound compress``.

What they mean is read in one place, :func:`pacbound.certify.occam_options.options_from_params`
(through ``METHODS[name].options(params)``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pacbound.cli.options import FLOAT, INT
from pacbound.errors import InvalidInputError

F = TypeVar("F", bound=Callable[..., Any])


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        values = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise InvalidInputError(
            f"--{param.name} must be an integer or a comma-separated list (e.g. 500,1000), "
            f"got {value!r}",
            param=f"--{param.name}",
        ) from None
    return values[0] if len(values) == 1 else values


#: The options of the compression methods (``--d``, ``--levels``, …, ``--qat-steps``), in
#: the order ``--help`` lists them.
TUNING_OPTIONS = (
    click.option(
        "--d",
        callback=_int_list,
        default=None,
        metavar="D[,D…]",
        help="subspace: dimension(s) d; a list is a predeclared search whose "
        "choice is paid in the code length. [default: 1000]",
    ),
    click.option(
        "--levels",
        callback=_int_list,
        default=None,
        metavar="L[,L…]",
        help="subspace/quantize: quantization level(s) L ≥ 2. [default: 8]",
    ),
    click.option(
        "--projector",
        type=click.Choice(["kronecker", "dense", "sparse"]),
        default="kronecker",
        show_default=True,
        help="subspace: random projector.",
    ),
    click.option(
        "--codebook",
        type=click.Choice(["kmeans", "uniform"]),
        default="kmeans",
        show_default=True,
        help="Quantization codebook.",
    ),
    click.option(
        "--precision",
        type=click.Choice(["float16", "float32", "float64"]),
        default="float32",
        show_default=True,
        help="Stored precision of the codebook (counted in the code length).",
    ),
    click.option(
        "--zero-level",
        is_flag=True,
        help="quantize: add an exact 0 level so pruned weights stay zero.",
    ),
    click.option(
        "--subspace-epochs",
        type=INT,
        default=20,
        show_default=True,
        help="subspace: training epochs of w.",
    ),
    click.option(
        "--subspace-lr",
        type=FLOAT,
        default=1e-2,
        show_default=True,
        help="subspace: learning rate of w.",
    ),
    click.option(
        "--subspace-batch-size",
        type=INT,
        default=128,
        show_default=True,
        help="subspace: mini-batch size.",
    ),
    click.option(
        "--subspace-optimizer",
        type=click.Choice(["adam", "sgd"]),
        default="adam",
        show_default=True,
        help="subspace: optimizer.",
    ),
    click.option(
        "--subspace-lr-schedule",
        type=click.Choice(["constant", "cosine"]),
        default="constant",
        show_default=True,
        help="subspace: learning-rate schedule (cosine decays to 0 over all steps).",
    ),
    click.option(
        "--subspace-init",
        type=click.Choice(["zero", "checkpoint"]),
        default="zero",
        show_default=True,
        help="subspace: start w at 0, or at the least-squares projection of the "
        "checkpoint's θ − θ₀.",
    ),
    click.option(
        "--qat-steps",
        type=INT,
        default=0,
        show_default=True,
        help="Quantization-aware fine-tuning steps (straight-through).",
    ),
    click.option(
        "--qat-examples",
        type=INT,
        default=10000,
        show_default=True,
        help="Quantization-aware fine-tuning: the size of the seeded subset of the data set "
        "whose full-batch loss each step follows (the whole set when smaller).",
    ),
    click.option(
        "--qat-lr",
        type=float,
        default=1e-3,
        show_default=True,
        help="Quantization-aware fine-tuning: Adam learning rate.",
    ),
)


def compression_tuning_options(func: F) -> F:
    """:data:`TUNING_OPTIONS` (``compress`` and ``certify``)."""
    for decorator in reversed(TUNING_OPTIONS):
        func = decorator(func)
    return func


def compression_options(func: F) -> F:
    """:func:`compression_tuning_options` plus ``--artifact`` (``certify``'s optional output)."""
    func = click.option(
        "--artifact",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Save the compressed model (the certified artifact).",
    )(func)
    return compression_tuning_options(func)

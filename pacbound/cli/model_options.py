"""Options shared by the commands that load a model and a data set, and their resolvers.

``model_options`` adds ``--arch``, ``--strip-prefix``, ``--arch-kwargs``, ``--init``,
``--unsafe-allow-pickle`` and ``--device``; ``data_options`` adds ``--data``, ``--split``,
``--label-map``, ``--label-column``, ``--normalize``, ``--x-key``, ``--y-key``,
``--csv-delimiter``, ``--input-shape`` and ``--scale``. A badly written value is *bad input*
(exit 3), like the numbers in :mod:`pacbound.cli.options`. The resolvers turn the parsed
values into library objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource
from torch import Tensor

from pacbound.cli.terminal import Terminal
from pacbound.io import (
    Dataset,
    Features,
    LabelMap,
    LoadedModel,
    Normalization,
    Split,
    data_format,
    load_dataset,
    load_features,
    load_init_state,
    load_model,
    parse_arch_kwargs,
    parse_input_shape,
    parse_label_map,
    parse_normalization,
    refuse_trained_init,
)
from pacbound.io.tabular import parse_delimiter
from pacbound.models import BUILTINS, builtin_help

F = TypeVar("F", bound=Callable[..., Any])

UNSAFE_PICKLE_WARNING = (
    "--unsafe-allow-pickle: a checkpoint that is not a plain state dict will be fully "
    "unpickled, which runs whatever code the file contains. Use it only for files you trust, "
    "and re-save them as .safetensors."
)

ARCH_HELP = f"""\b
Built-in architectures (--arch NAME) and their --arch-kwargs:
{builtin_help()}
Or --arch package.module:factory, imported from the current folder or the Python path;
the factory is called with --arch-kwargs and must return a torch.nn.Module.
"""


class _Parsed(click.ParamType):
    """A value parsed by a library function that raises InvalidInputError (exit 3)."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self.parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        return self.parse(value)


JSON_OBJECT = _Parsed("json", parse_arch_kwargs)
LABEL_MAP = _Parsed("label-map", parse_label_map)
NORMALIZATION = _Parsed("normalization", parse_normalization)
INPUT_SHAPE = _Parsed("input-shape", parse_input_shape)
DELIMITER = _Parsed("delimiter", parse_delimiter)

#: The data options after --data and --split, as resolve_dataset keywords (see data_kwargs).
DATA_KWARGS = (
    "label_map",
    "label_column",
    "normalize",
    "x_key",
    "y_key",
    "csv_delimiter",
    "input_shape",
    "scale",
)
#: Options that apply only to some data formats: option name → (formats, what they are).
FORMAT_OPTIONS = {
    "x_key": ({"npz", "safetensors"}, ".npz or .safetensors files"),
    "y_key": ({"npz", "safetensors"}, ".npz or .safetensors files"),
    "csv_delimiter": ({"csv"}, ".csv files"),
    "label_column": ({"csv"}, ".csv files"),
}
#: Parameters of a command that hold data paths read with the shared data options.
DATA_PATHS = ("data", "heldout", "unlabeled")


def arch_options(func: F) -> F:
    """``--arch``, ``--strip-prefix``, ``--arch-kwargs`` and ``--unsafe-allow-pickle``
    (enough to read a model)."""
    decorators = [
        click.option(
            "--arch",
            metavar="NAME|PKG.MOD:FACTORY",
            help=f"Architecture the weights belong to: {', '.join(BUILTINS)}, or "
            "package.module:factory. Not needed for a .pt2 program, nor for a whole model "
            "saved with torch.save(model) (with --unsafe-allow-pickle).",
        ),
        click.option(
            "--strip-prefix",
            metavar="PREFIX",
            help="Remove PREFIX from the tensor names of CHECKPOINT (and of --init, where they "
            "have it), e.g. 'model.' for a Lightning checkpoint whose state_dict holds "
            "model.fc.weight. Recorded in the report.",
        ),
        click.option(
            "--arch-kwargs",
            type=JSON_OBJECT,
            default=None,
            metavar="JSON",
            help="""Keyword arguments for the factory, a JSON object: '{"hidden": [600]}'.""",
        ),
        click.option(
            "--unsafe-allow-pickle",
            is_flag=True,
            help="UNSAFE: fully unpickle .pt/.pth/.ckpt files that are not plain state dicts "
            "(a whole model saved with torch.save(model) then needs no --arch). This runs code "
            "from the file; only for files you trust.",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def model_options(func: F) -> F:
    """:func:`arch_options` plus ``--init`` and ``--device``."""
    func = click.option(
        "--device",
        metavar="DEVICE",
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu).",
    )(func)
    func = click.option(
        "--init",
        metavar="PATH",
        help="Weights at initialization (same formats and architecture), saved before "
        "training: the centre of an initialization prior (gaussian), or θ₀ of the subspace "
        "(subspace; the decoder then needs the same file; required for a .pt2 program).",
    )(func)
    return arch_options(func)


#: The data options, in --help order.
DATA_OPTIONS = (
    click.option(
        "--data",
        required=True,
        metavar="PATH",
        help="An MNIST IDX folder, or a .npz / .safetensors file (arrays x, y), or a .csv "
        "file, or a folder with x.npy and y.npy (memory-mapped and streamed in batches, for "
        "data sets larger than memory). Read offline; never downloaded.",
    ),
    click.option(
        "--split",
        type=click.Choice([s.value for s in Split]),
        default=Split.TRAIN.value,
        show_default=True,
        help="Which IDX files to read from an MNIST folder.",
    ),
    click.option(
        "--label-map",
        type=LABEL_MAP,
        metavar="OLD:NEW,…",
        help="Relabel, e.g. 0-4:0,5-9:1 for binary MNIST (ranges inclusive).",
    ),
    click.option(
        "--label-column",
        metavar="NAME|INDEX",
        help="CSV label column, by header name or 0-based index (default: a column named "
        "label/y/target/class, else the last).",
    ),
    click.option(
        "--normalize",
        type=NORMALIZATION,
        metavar="MEAN,STD|mnist",
        help="Subtract MEAN and divide by STD (after --scale), per channel (axis 1) as "
        "M1/M2/M3,S1/S2/S3; 'mnist' is 0.1307,0.3081.",
    ),
    click.option(
        "--x-key",
        default="x",
        show_default=True,
        metavar="NAME",
        help="Name of the features array in a .npz or .safetensors file.",
    ),
    click.option(
        "--y-key",
        default="y",
        show_default=True,
        metavar="NAME",
        help="Name of the labels array in a .npz or .safetensors file.",
    ),
    click.option(
        "--csv-delimiter",
        type=DELIMITER,
        default=",",
        show_default=True,
        metavar="CHAR",
        help="Field separator of a .csv file (';', '|', 'tab', …).",
    ),
    click.option(
        "--input-shape",
        type=INPUT_SHAPE,
        metavar="C,H,W",
        help="Reshape every example to this shape (same number of values), e.g. 1,28,28 "
        "for 784-column rows. Default: as stored, except that N×H×W images (IDX, uint8) "
        "get a channel axis.",
    ),
    click.option(
        "--scale",
        type=click.Choice(["auto", "none"]),
        default="auto",
        show_default=True,
        help="auto: uint8 features are images and are divided by 255; other dtypes are "
        "used as stored. none: uint8 values as they are.",
    ),
)


def data_options(func: F) -> F:
    """``--data``, ``--split``, ``--label-map``, ``--label-column``, ``--normalize`` and the
    format options ``--x-key``, ``--y-key``, ``--csv-delimiter``, ``--input-shape``,
    ``--scale``."""
    for decorator in reversed(DATA_OPTIONS):
        func = decorator(func)
    return func


def data_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """The data options of a command's parsed parameters, as :func:`resolve_dataset`
    keywords (``--data`` and ``--split`` excluded: each data input has its own)."""
    return {name: kw[name] for name in DATA_KWARGS if name in kw}


def resolve_model(
    checkpoint: str,
    *,
    arch: str | None,
    arch_kwargs: dict[str, Any] | None,
    unsafe_allow_pickle: bool,
    device: str | None,
    terminal: Terminal,
    strip_prefix: str | None = None,
) -> LoadedModel:
    """Load the model the options describe, warning first when unpickling is allowed."""
    if unsafe_allow_pickle:
        terminal.warn(UNSAFE_PICKLE_WARNING)
    loaded = load_model(
        checkpoint,
        arch=arch,
        arch_kwargs=arch_kwargs,
        unsafe_allow_pickle=unsafe_allow_pickle,
        device=device,
        strip_prefix=strip_prefix,
    )
    return loaded


def resolve_init(
    init: str | None, model: LoadedModel, *, unsafe_allow_pickle: bool
) -> dict[str, Tensor] | None:
    """The ``--init`` weights checked against ``model``, or ``None`` without ``--init``."""
    if init is None:
        return None
    state = load_init_state(init, model, unsafe_allow_pickle=unsafe_allow_pickle)
    refuse_trained_init(state, model)
    return state


def resolve_dataset(
    data: str,
    *,
    split: str,
    label_map: LabelMap | None,
    label_column: str | None,
    normalize: Normalization | None,
    x_key: str = "x",
    y_key: str = "y",
    csv_delimiter: str = ",",
    input_shape: tuple[int, ...] | None = None,
    scale: str = "auto",
) -> Dataset:
    """Load the data set the options describe (format options that fit none of the command's
    data inputs are a usage error)."""
    _refuse_inapplicable()
    return load_dataset(
        data,
        split=split,
        label_column=label_column,
        label_map=label_map,
        normalize=normalize,
        x_key=x_key,
        y_key=y_key,
        csv_delimiter=csv_delimiter,
        input_shape=input_shape,
        scale=scale,
        option=_option_for(data),
    )


def resolve_features(
    path: str,
    *,
    split: str,
    label_column: str | None = None,
    normalize: Normalization | None = None,
    x_key: str = "x",
    csv_delimiter: str = ",",
    input_shape: tuple[int, ...] | None = None,
    scale: str = "auto",
    **_labels_only: Any,
) -> Features:
    """Load inputs without labels (``--unlabeled``) with the same format options as --data
    (``--label-map``/``--y-key`` are accepted and have nothing to apply to)."""
    _refuse_inapplicable()
    return load_features(
        path,
        split=split,
        label_column=label_column,
        normalize=normalize,
        x_key=x_key,
        csv_delimiter=csv_delimiter,
        input_shape=input_shape,
        scale=scale,
        option=_option_for(path),
    )


def _option_for(path: str) -> str:
    """The option of the running command that holds ``path`` (``--heldout``, …), for error
    messages; ``--data`` outside a command."""
    ctx = click.get_current_context(silent=True)
    params = {} if ctx is None else ctx.params
    return next((f"--{name}" for name in DATA_PATHS if params.get(name) == path), "--data")


def _refuse_inapplicable() -> None:
    """A format option given on the command line that fits none of the data inputs
    (``--data``, ``--heldout``, ``--unlabeled``) is a usage error, not silently ignored."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    formats = {
        fmt.value
        for name in DATA_PATHS
        if ctx.params.get(name) is not None and (fmt := data_format(ctx.params[name])) is not None
    }
    if not formats:
        return
    for name, (applies, what) in FORMAT_OPTIONS.items():
        given = name in ctx.params and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        if given and not applies & formats:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(
                f"{flag} applies to {what} only; the data given are "
                f"{', '.join(sorted(formats))}: drop {flag}",
                ctx=ctx,
            )

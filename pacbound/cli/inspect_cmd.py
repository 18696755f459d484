"""``pacbound inspect``: what a checkpoint holds, and whether it loads into an architecture."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from pacbound._version import __version__
from pacbound.cli.model_options import ARCH_HELP, UNSAFE_PICKLE_WARNING, arch_options
from pacbound.cli.options import json_option
from pacbound.cli.terminal import Terminal, emit_json
from pacbound.errors import InvalidInputError
from pacbound.io import CheckpointReport, TensorKind, inspect_checkpoint

HELP = f"""Show every tensor of CHECKPOINT (.safetensors, .pt/.pth/.ckpt state dict, or .pt2).

Parameters and buffers are listed apart, with their counts, dtypes and the file's SHA-256.
Buffers such as BatchNorm running statistics are estimated from data: a bound must fix them
in the prior or pay for them. With --arch, the checkpoint is also loaded strictly into the
architecture; a mismatch is reported and the exit code is 3.

{ARCH_HELP}"""

EXAMPLES = """\b
Examples:
  pacbound inspect model.safetensors
  pacbound inspect model.safetensors --arch mlp --arch-kwargs '{"hidden": [600, 600]}'
  pacbound inspect model.pt --arch mynets.mnist:make_model --json
  pacbound inspect program.pt2
  pacbound inspect lightning.ckpt --arch mlp --strip-prefix model.
  pacbound inspect whole_model.pt --unsafe-allow-pickle
"""


@click.command("inspect", help=HELP, epilog=EXAMPLES)
@click.argument("checkpoint")
@arch_options
@json_option
def inspect(
    checkpoint: str,
    arch: str | None,
    strip_prefix: str | None,
    arch_kwargs: dict[str, Any] | None,
    unsafe_allow_pickle: bool,
    as_json: bool,
) -> None:
    term = Terminal()
    if unsafe_allow_pickle:
        term.warn(UNSAFE_PICKLE_WARNING)
    report = inspect_checkpoint(
        checkpoint,
        arch=arch,
        arch_kwargs=arch_kwargs,
        unsafe_allow_pickle=unsafe_allow_pickle,
        strip_prefix=strip_prefix,
    )
    if as_json:
        emit_json(
            {"tool": "pacbound", "version": __version__, "command": "inspect"} | report.to_dict()
        )
    else:
        _render(term, report)
    if report.loads is False:
        raise InvalidInputError(report.load_error or "the checkpoint does not load", param="--arch")


def _render(term: Terminal, report: CheckpointReport) -> None:
    tensors = Table(title="Tensors", title_justify="left")
    for column in ("name", "kind", "shape", "dtype"):
        tensors.add_column(column)
    tensors.add_column("elements", justify="right")
    for t in report.tensors:
        shape = "×".join(map(str, t.shape)) or "scalar"
        tensors.add_row(t.name, t.kind.value, shape, t.dtype, f"{t.numel:,}")
    term.table(tensors)
    summary = Table(show_header=False, title="Checkpoint", title_justify="left")
    summary.add_column("quantity", style="bold")
    summary.add_column("value", overflow="fold")
    prov = report.provenance
    summary.add_row("file", prov.file.path)
    summary.add_row("sha256", prov.file.sha256)
    summary.add_row("format", prov.format)
    if prov.nested_key is not None:
        summary.add_row("state dict under key", repr(prov.nested_key))
    if prov.stripped_prefix is not None:
        summary.add_row("stripped prefix", repr(prov.stripped_prefix))
    elif report.common_prefix is not None and report.loads is not True:
        prefix = report.common_prefix
        summary.add_row("names share", f"{prefix!r} (try --strip-prefix {prefix})")
    if prov.unsafe_pickle:
        summary.add_row("loaded by", "full unpickling (--unsafe-allow-pickle)")
    n_params = sum(t.kind is TensorKind.PARAMETER for t in report.tensors)
    n_buffers = len(report.tensors) - n_params
    summary.add_row("parameters", f"{report.num_parameters:,} in {n_params} tensors")
    summary.add_row("buffers", f"{report.num_buffer_elements:,} in {n_buffers} tensors")
    summary.add_row(
        "kinds from",
        "the architecture" if report.kinds_from == "architecture" else "tensor names (no --arch)",
    )
    if report.loads is None:
        loads = "not checked (give --arch)"
    else:
        own = "its own program (.pt2)" if prov.format == "pt2" else "the pickled model itself"
        arch = report.architecture or own
        loads = f"yes, into {arch}" if report.loads else f"no, into {arch}"
    summary.add_row("loads", loads)
    term.table(summary)

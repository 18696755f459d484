"""``pacbound compress``: compress a checkpoint, save the artifact, print its code length and bound.

The pipeline is ``certify`` with a method whose hypothesis is a compressed artifact
(``with_hypothesis("artifact")``: ``subspace``, ``quantize``); this command only makes the
artifact its required output.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from pacbound.certify.method import Method, RunInputs
from pacbound.certify.registry import METHODS, with_hypothesis
from pacbound.cli.applicability import reject_inapplicable
from pacbound.cli.compression_options import compression_tuning_options
from pacbound.cli.model_options import data_options, model_options
from pacbound.cli.options import FLOAT, INT, json_option, threads_option
from pacbound.cli.parallel_run import agree_on_inputs, check_world_size, input_sizes, join_world
from pacbound.cli.preflight import check_option_values
from pacbound.cli.run_inputs import load_run_inputs
from pacbound.cli.terminal import Terminal, emit_json, render_certificate
from pacbound.io.files import check_writable, write_atomic
from pacbound.parallel import collectively, current, on_writer

EXAMPLES = """\b
Examples:
  # Quantize the trained weights to a 16-level k-means codebook:
  pacbound compress final.safetensors --method quantize --levels 16 \\
      --arch mlp --data examples/data/mnist -o model.pbcm
  # Train in a random 1000-dimensional subspace around the seed-0 initialisation:
  pacbound compress final.safetensors --method subspace --d 1000 --levels 8 \\
      --arch mlp --data examples/data/mnist -o model.pbcm --json
  # Anyone can then re-derive the bound from the artifact alone:
  pacbound verify model.pbcm --arch mlp --data examples/data/mnist
"""

HELP = """Compress the model in CHECKPOINT and save the compressed message to -o ARTIFACT.

The artifact is the message whose length K (in bits, everything counted: header,
architecture fingerprint, hyperparameters, codebook, buffers, symbols, padding and CRC) is the
code length of the Occam bound. The command decodes the artifact, counts the decoded model's
errors on --data and prints the code length, its breakdown and the bound: with probability at
least 1 − δ, the true 0-1 error of the DECODED model is at most the printed bound.
"""


@click.command("compress", help=HELP, epilog=EXAMPLES)
@click.argument("checkpoint")
@click.option(
    "--method",
    type=click.Choice(with_hypothesis("artifact")),
    required=True,
    help="; ".join(f"{name}: {METHODS[name].description}" for name in with_hypothesis("artifact"))
    + ".",
)
@model_options
@data_options
@compression_tuning_options
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the artifact (the compressed message) to this file, atomically.",
)
@click.option(
    "--delta",
    type=FLOAT,
    default=0.05,
    show_default=True,
    help="Failure probability δ of the printed bound.",
)
@click.option("--seed", type=INT, default=0, show_default=True, help="Seed of every random stream.")
@click.option(
    "--batch-size", type=INT, default=1024, show_default=True, help="Evaluation batch size."
)
@click.option(
    "--allow-nondeterministic",
    is_flag=True,
    help="Skip the check that two eval-mode passes agree (the bound may then not describe "
    "the decoded model).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress or diagnostics on stderr.")
@json_option
@threads_option
def compress(**kw: Any) -> None:
    world = join_world(kw)  # under torchrun: this rank's device, the process group
    term = Terminal(quiet=kw["quiet"] or kw["as_json"], mute=not world.is_writer)
    method = METHODS[kw["method"]]
    ctx = click.get_current_context()
    options, inputs, records = collectively(lambda: _prepare(ctx, kw, method, term))
    agree_on_inputs(records, {"--init": kw["init"]})
    check_world_size(input_sizes(inputs))
    term.info(
        f"compressing ({method.name}) {inputs.loaded.num_parameters} parameters, scored on "
        f"n = {inputs.data.n} examples on {inputs.device}"
        + (f", {world.world_size} processes" if world.distributed else "")
    )
    with term.progress_callbacks() as progress:
        run = method.run(replace(inputs, progress=progress), options)
    payload = run.certificate.hypothesis
    on_writer(lambda: write_atomic(kw["output"], payload, "--output"))
    if not world.is_writer:
        return
    record = method.hypothesis.record(kw["output"], payload)
    res = run.certificate.results
    if kw["as_json"]:
        emit_json(
            {
                "command": "compress",
                "artifact": record,
                "inputs": {**records, **run.inputs},
                "options": {**run.options, "threads": kw["threads"]},
                "results": res,
            }
        )
        return
    render_certificate(term, method, res)
    term.line(
        f"artifact {kw['output']}: {record['bytes']} bytes (= {8 * record['bytes']} bits), "
        f"sha256 {record['sha256']}"
    )


def _prepare(
    ctx: click.Context, kw: dict[str, Any], method: Method, term: Terminal
) -> tuple[Any, RunInputs, dict[str, Any]]:
    """Cheap checks first (a typo fails in milliseconds, before anything is loaded), the
    artifact's path checked by rank 0 (which writes it), then the inputs loaded."""
    reject_inapplicable(ctx)
    check_option_values(kw)
    if current().is_writer:
        check_writable(kw["output"], "--output")
    options = method.options({**ctx.params, "artifact": kw["output"]})
    inputs, records = load_run_inputs(kw, term)
    return options, inputs, records

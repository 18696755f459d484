"""``pacbound certify``: load a checkpoint and its training data, certify, report, gate."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from pacbound.certify.method import Method, RunInputs
from pacbound.certify.registry import METHODS, needs_checkpoint
from pacbound.cli.applicability import reject_inapplicable
from pacbound.cli.compression_options import compression_options
from pacbound.cli.gate import evaluate_gate, gate_options
from pacbound.cli.marginal_options import marginal_options
from pacbound.cli.model_options import (
    data_options,
    model_options,
)
from pacbound.cli.options import FLOAT, INT, json_option, threads_option
from pacbound.cli.pac_bayes_options import pac_bayes_options
from pacbound.cli.parallel_run import (
    agree_on_inputs,
    check_world_size,
    input_sizes,
    join_world,
    run_environment,
)
from pacbound.cli.preflight import check_option_values
from pacbound.cli.run_inputs import load_run_inputs
from pacbound.cli.terminal import Terminal, dumps_json, emit_json, render_certificate
from pacbound.errors import UsageError
from pacbound.io.files import (
    MIN_FREE_BYTES,
    check_free_space,
    check_writable,
    write_atomic,
)
from pacbound.parallel import collectively, current, on_writer
from pacbound.report.document import build_report
from pacbound.report.summary import append_step_summary

EXAMPLES = """\b
Examples:
  # PAC-Bayes, prior centred at the initial weights, isotropic posterior:
  pacbound certify final.safetensors --arch mlp --init init.safetensors \\
      --data examples/data/mnist --method gaussian
  # Binary MNIST, diagonal posterior, JSON report, CI gate:
  pacbound certify final.safetensors --arch mlp --arch-kwargs '{"num_classes": 2}' \\
      --init init.safetensors --data examples/data/mnist --label-map 0-4:0,5-9:1 \\
      --posterior diagonal --output report.json --max-bound 0.2
  # Data-dependent prior trained on half of the data (the bound uses the other half):
  pacbound certify final.safetensors --arch mlp --data examples/data/mnist \\
      --prior data --prior-fraction 0.5 --posterior diagonal
  # No checkpoint: the ReLU network's GP prior conditioned on fitting 500 binary MNIST
  # images (the marginal-likelihood bound; --data as an .npz subset):
  pacbound certify --method marginal --data mnist_500.npz --label-map 0-4:0,5-9:1 \\
      --kernel relu --kernel-depth 2 --save-kernel kernel.json --output report.json
"""

HELP = """Certify the true 0-1 error of the model in CHECKPOINT, trained on --data.

--method gaussian fits a Gaussian posterior Q around the weights and certifies Q (a
stochastic classifier that draws fresh weights for every prediction) with the PAC-Bayes-kl
bound; Q's empirical risk is upper-bounded from n·K fresh per-example weight draws. With
probability at least 1 − δ over the training sample and the draws, the true error of Q is
at most the printed bound (rounded up). The bound is non-vacuous when it is below the error
of guessing, 1 − 1/K.

--method marginal needs no CHECKPOINT: it certifies Q = the architecture's GP prior (its
NNGP kernel, or a Monte-Carlo kernel of --arch) conditioned on fitting S exactly, with KL =
−ln P(U) bounded by importance sampling (MATH.md §12). A CHECKPOINT given with --heldout
only adds its held-out error beside Q's estimated one (for information).
"""


@click.command("certify", help=HELP, epilog=EXAMPLES)
@click.argument("checkpoint", required=False)
@model_options
@data_options
@click.option(
    "--method",
    type=click.Choice(list(METHODS)),
    default=next(iter(METHODS)),
    show_default=True,
    help="; ".join(f"{name}: {m.description}" for name, m in METHODS.items()) + ".",
)
@compression_options
@marginal_options
@click.option(
    "--delta",
    type=FLOAT,
    default=0.05,
    show_default=True,
    help="Total failure probability δ of the certificate.",
)
@pac_bayes_options
@click.option(
    "--heldout",
    metavar="PATH",
    default=None,
    help="Held-out data (same format options as --data) for a test-set bound on the "
    "checkpoint's point weights, never used for anything else. --method marginal: Q's "
    "held-out error, estimated (not a bound), and the checkpoint's error if one is given.",
)
@click.option(
    "--heldout-split",
    type=click.Choice(["train", "test"]),
    default="test",
    show_default=True,
    help="Split of an IDX folder given to --heldout.",
)
@click.option(
    "--heldout-delta",
    type=FLOAT,
    default=None,
    help="δ of the held-out bound, a separate statement (default: --delta).",
)
@click.option(
    "--unlabeled",
    metavar="PATH",
    default=None,
    help="Inputs (labels not needed) never used for anything else, on which the certified "
    "classifier's disagreement with the checkpoint is bounded: adds a certificate for the "
    "checkpoint itself, L(h) ≤ L(Q) + D(h, Q). Without it, --heldout's inputs are used.",
)
@click.option(
    "--unlabeled-split",
    type=click.Choice(["train", "test"]),
    default="test",
    show_default=True,
    help="Split of an IDX folder given to --unlabeled.",
)
@click.option(
    "--disagreement-delta",
    type=FLOAT,
    default=None,
    help="δ_D of the disagreement bound in the checkpoint's certificate (default δ/5); "
    "that certificate holds with probability ≥ 1 − δ − δ_D.",
)
@click.option("--seed", type=INT, default=0, show_default=True, help="Seed of every random stream.")
@click.option(
    "--batch-size", type=INT, default=1024, show_default=True, help="Evaluation batch size."
)
@click.option(
    "--allow-nondeterministic",
    is_flag=True,
    help="Skip the check that two eval-mode passes agree (the certificate may then "
    "not describe the evaluated model). --method gaussian then evaluates one example at a "
    "time for the certificate, so that randomness in forward is drawn per example (slow).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON report to this file (atomically).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress or diagnostics on stderr.")
@gate_options
@json_option
@threads_option
def certify(**kw: Any) -> None:
    start = time.perf_counter()
    world = join_world(kw)  # under torchrun: this rank's device, the process group
    term = Terminal(quiet=kw["quiet"] or kw["as_json"], mute=not world.is_writer)
    method = METHODS[kw["method"]]
    ctx = click.get_current_context()
    options, inputs, records = collectively(lambda: _prepare(ctx, kw, method, term))
    environment = run_environment(inputs.device)
    agree_on_inputs(records, {"--init": kw["init"]})
    check_world_size(input_sizes(inputs))
    hypothesis_path = kw[hypothesis_param(method)]
    what = "" if inputs.checkpoint is None else f"{inputs.checkpoint.num_parameters} parameters "
    # without a checkpoint (marginal) C is an option, not the largest label of the data
    labels = "" if inputs.checkpoint is None else f" ({inputs.data.num_classes} classes)"
    term.info(
        f"certifying ({method.name}) {what}on "
        f"n = {inputs.data.n} examples{labels} on {inputs.device}"
        + (f", {world.world_size} processes" if world.distributed else "")
    )
    with term.progress_callbacks() as progress:
        run = method.run(replace(inputs, progress=progress), options)
    cert = run.certificate
    records.update(run.inputs)
    if hypothesis_path is not None:
        records[method.hypothesis.key] = method.hypothesis.record(hypothesis_path, cert.hypothesis)
    for message in run.warnings:
        term.warn(message)
    gate = evaluate_gate(
        cert.results["bound"],
        cert.results["verdict"]["chance_error"],
        max_bound=kw["max_bound"],
        fail_if_vacuous=kw["fail_if_vacuous"],
        exit_zero=kw["exit_zero"],
    )
    report = build_report(
        command="certify",
        inputs=records,
        options={**run.options, "threads": kw["threads"]},
        seeds={"seed": kw["seed"]},
        results=cert.results,
        gate=gate.to_dict(),
        timings={**cert.timings, "total": time.perf_counter() - start},
        warnings=list(run.warnings),
        device=str(inputs.device),
        world=environment,
    )
    on_writer(lambda: _write(kw, method, hypothesis_path, cert.hypothesis, report))
    if not world.is_writer:
        ctx.exit(gate.exit_code)
    if kw["as_json"]:
        emit_json(report)
    else:
        render_certificate(term, method, cert.results)
    for reason in gate.reasons:
        click.echo(f"Gate failed: {reason}", err=True)
    ctx.exit(gate.exit_code)


def _prepare(
    ctx: click.Context, kw: dict[str, Any], method: Method, term: Terminal
) -> tuple[Any, RunInputs, dict[str, Any]]:
    """The options checked (cheap checks first: a typo fails in milliseconds, before
    anything is loaded), the outputs checked writable (by rank 0, which writes them), the
    inputs loaded."""
    reject_inapplicable(ctx)
    check_option_values(kw)
    if kw.get("checkpoint") is None and needs_checkpoint(method):
        raise UsageError(
            f"--method {method.name} certifies a trained model: give its CHECKPOINT (only "
            "--method marginal runs without one)",
            param="CHECKPOINT",
        )
    hypothesis_path = kw[hypothesis_param(method)]
    writer = current().is_writer
    for option in ("output", hypothesis_param(method)):
        if kw.get(option) is not None and writer:
            check_writable(kw[option], "--" + option.replace("_", "-"))
    options = method.options(ctx.params)
    inputs, records = load_run_inputs(kw, term)
    if hypothesis_path is not None and writer:
        # the hypothesis (μ, σ and the prior mean; or a message) at the parameters' precision
        params = () if inputs.checkpoint is None else inputs.checkpoint.module.parameters()
        needed = 3 * sum(p.numel() * p.element_size() for p in params) + MIN_FREE_BYTES
        check_free_space(hypothesis_path, needed, method.hypothesis.option)
    return options, inputs, records


def _write(
    kw: dict[str, Any],
    method: Method,
    hypothesis_path: Path | None,
    hypothesis: bytes,
    report: dict[str, Any],
) -> None:
    """Rank 0's files, each atomically: the hypothesis, the report, the job summary."""
    if hypothesis_path is not None:
        write_atomic(hypothesis_path, hypothesis, method.hypothesis.option)
    if kw["output"] is not None:
        write_atomic(kw["output"], dumps_json(report).encode(), "--output")
    append_step_summary(report)


def hypothesis_param(method: Method) -> str:
    """The click parameter name of the option that writes ``method``'s hypothesis file."""
    return method.hypothesis.option.lstrip("-").replace("-", "_")

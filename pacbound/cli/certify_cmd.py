"""``pacbound certify``: load a checkpoint and its training data, certify, report, gate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from pacbound.cli.applicability import reject_inapplicable
from pacbound.cli.certify_compression import (
    check_same_input_shape,
    compression_options,
    run_compression,
)
from pacbound.cli.certify_gaussian import run_gaussian
from pacbound.cli.gate import evaluate_gate, gate_options
from pacbound.cli.model_options import (
    data_kwargs,
    data_options,
    model_options,
    resolve_dataset,
    resolve_model,
)
from pacbound.cli.options import FLOAT, INT, json_option, threads_option
from pacbound.cli.preflight import check_disjoint_inputs, check_option_values
from pacbound.cli.terminal import Terminal, dumps_json, emit_json
from pacbound.errors import UsageError
from pacbound.io.files import (
    MIN_FREE_BYTES,
    check_free_space,
    check_writable,
    write_atomic,
)

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
"""

HELP = """Certify the true 0-1 error of the model in CHECKPOINT, trained on --data.

--method gaussian fits a Gaussian posterior Q around the weights and certifies Q (a
stochastic classifier that draws fresh weights for every prediction) with the PAC-Bayes-kl
bound; Q's empirical risk is upper-bounded from n·K fresh per-example weight draws. With
probability at least 1 − δ over the training sample and the draws, the true error of Q is
at most the printed bound (rounded up). The bound is non-vacuous when it is below the error
of guessing, 1 − 1/K.
"""


@click.command("certify", help=HELP, epilog=EXAMPLES)
@click.argument("checkpoint")
@model_options
@data_options
@click.option(
    "--method",
    type=click.Choice(["gaussian", "subspace", "quantize"]),
    default="gaussian",
    show_default=True,
    help="gaussian: PAC-Bayes for a Gaussian posterior; subspace / quantize: Occam bound "
    "for the decoded compressed model.",
)
@compression_options
@click.option(
    "--prior",
    type=click.Choice(["init", "zero", "data"]),
    default="init",
    show_default=True,
    help="Prior mean: the --init weights, zero, or trained on a seeded prior split of --data.",
)
@click.option(
    "--prior-fraction",
    type=FLOAT,
    default=0.5,
    show_default=True,
    help="With --prior data: share of --data used to train the prior mean.",
)
@click.option(
    "--prior-epochs",
    type=INT,
    default=10,
    show_default=True,
    help="With --prior data: SGD epochs on the prior split.",
)
@click.option(
    "--prior-lr",
    type=FLOAT,
    default=0.01,
    show_default=True,
    help="With --prior data: SGD learning rate (momentum 0.95, batch 250).",
)
@click.option(
    "--prior-lr-schedule",
    type=click.Choice(["cosine", "constant"]),
    default="cosine",
    show_default=True,
    help="With --prior data: learning-rate schedule (cosine decays to 0 over all steps).",
)
@click.option(
    "--prior-augment-shift",
    type=INT,
    default=0,
    show_default=True,
    metavar="PIXELS",
    help="With --prior data and image inputs: shift each prior-training image by a random "
    "offset of up to PIXELS (S_prior only; the bound part is never augmented).",
)
@click.option(
    "--prior-scales",
    default="1e-6:1:6001",
    show_default=True,
    metavar="LOW:HIGH:COUNT|S1,S2,…",
    help="Grid of prior standard deviations; the choice costs ln(COUNT) nats.",
)
@click.option(
    "--posterior",
    type=click.Choice(["isotropic", "diagonal"]),
    default="isotropic",
    show_default=True,
    help="isotropic: one σ by search around the checkpoint (fast); diagonal: mean and "
    "per-weight σ trained on the kl bound surrogate.",
)
@click.option(
    "--sampler",
    type=click.Choice(["auto", "layers", "functional"]),
    default="auto",
    show_default=True,
    help="How per-example weight draws are made. layers: exact fast samplers for "
    "nn.Linear/nn.Conv2d (other parameters, ties and reuse refused); functional: the whole "
    "parameter vector drawn per example, each example evaluated alone (torch.func.vmap; "
    "any module, ties included; memory ∝ batch × parameters); auto: functional for a .pt2 "
    "program, layers otherwise.",
)
@click.option(
    "--posterior-epochs", type=INT, default=10, show_default=True, help="diagonal: training epochs."
)
@click.option(
    "--posterior-optimizer",
    type=click.Choice(["sgd", "adam"]),
    default="sgd",
    show_default=True,
    help="diagonal: optimizer of the means (SGD with momentum 0.9, or Adam).",
)
@click.option(
    "--posterior-lr",
    type=FLOAT,
    default=1e-3,
    show_default=True,
    help="diagonal: learning rate of the means.",
)
@click.option(
    "--keep-best/--keep-last",
    default=True,
    show_default=True,
    help="diagonal: keep the epoch (0 = before training) with the smallest estimated bound "
    "(free: PAC-Bayes holds for every posterior; the certificate's draws are fresh).",
)
@click.option(
    "--sigma-lr",
    type=FLOAT,
    default=1e-2,
    show_default=True,
    help="diagonal: Adam learning rate of log σ and log σ_prior.",
)
@click.option(
    "--objective",
    type=click.Choice(["kl", "quad"]),
    default="kl",
    show_default=True,
    help="diagonal: bound form used as the training objective.",
)
@click.option(
    "--p-min",
    type=FLOAT,
    default=0.5,
    show_default=True,
    help="diagonal: bounded cross-entropy floor; 0.5 makes it an upper bound of the 0-1 loss.",
)
@click.option(
    "--mc-passes",
    type=INT,
    default=5,
    show_default=True,
    help="Monte-Carlo passes K: n·K independent per-example weight draws.",
)
@click.option(
    "--delta",
    type=FLOAT,
    default=0.05,
    show_default=True,
    help="Total failure probability δ of the certificate.",
)
@click.option(
    "--mc-delta",
    type=FLOAT,
    default=None,
    help="Part of --delta for the Monte-Carlo bound (default δ/5).",
)
@click.option(
    "--heldout",
    metavar="PATH",
    default=None,
    help="Held-out data (same format options as --data) for a test-set bound on the "
    "checkpoint's point weights, never used for anything else.",
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
@click.option(
    "--save-posterior",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Save the posterior (means, σ, prior) as safetensors for re-checking.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress or diagnostics on stderr.")
@gate_options
@json_option
@threads_option
def certify(**kw: Any) -> None:
    start = time.perf_counter()
    term = Terminal(quiet=kw["quiet"] or kw["as_json"])
    method = kw["method"]
    # Cheap checks first: a typo fails in milliseconds, before anything is loaded.
    reject_inapplicable(click.get_current_context())
    check_option_values(kw)
    for option in ("output", "save_posterior", "artifact"):
        if kw.get(option) is not None:
            check_writable(kw[option], "--" + option.replace("_", "-"))
    if method == "gaussian" and kw["prior"] == "init" and kw["init"] is None:
        raise UsageError(
            "--prior init needs the initial weights: pass --init PATH (saved before training), "
            "or choose --prior zero or --prior data",
            param="--init",
        )
    from pacbound.io import check_model_data, resolve_device

    device = resolve_device(kw["device"])
    loaded = resolve_model(
        kw["checkpoint"],
        arch=kw["arch"],
        arch_kwargs=kw["arch_kwargs"],
        unsafe_allow_pickle=kw["unsafe_allow_pickle"],
        device=kw["device"],
        terminal=term,
        strip_prefix=kw["strip_prefix"],
    )
    data_kw = data_kwargs(kw)
    data = resolve_dataset(kw["data"], split=kw["split"], **data_kw)
    check_model_data(loaded, data, device=device)
    if kw.get("save_posterior") is not None:
        # μ, σ and the prior mean at the parameters' precision, plus headroom.
        param_bytes = sum(p.numel() * p.element_size() for p in loaded.module.parameters())
        needed = 3 * param_bytes + MIN_FREE_BYTES
        check_free_space(kw["save_posterior"], needed, "--save-posterior")
    heldout = None
    if kw["heldout"] is not None:
        heldout = resolve_dataset(kw["heldout"], split=kw["heldout_split"], **data_kw)
        check_disjoint_inputs(data.provenance, heldout.provenance, "--heldout")
        check_model_data(loaded, heldout, device=device)
    unlabeled = None
    if kw["unlabeled"] is not None:
        unlabeled = resolve_unlabeled(kw, data_kw)
        check_disjoint_inputs(data.provenance, unlabeled.provenance, "--unlabeled")
        check_same_input_shape(unlabeled, data, "--unlabeled")
    term.info(
        f"certifying ({method}) {loaded.num_parameters} parameters on n = {data.n} examples "
        f"({data.num_classes} classes) on {device}"
    )
    inputs: dict[str, Any] = {"model": loaded.to_dict(), "data": data.provenance.to_dict()}
    if heldout is not None:
        inputs["heldout"] = heldout.provenance.to_dict()
    if unlabeled is not None:
        inputs["unlabeled"] = unlabeled.provenance.to_dict()
    with term.progress_callbacks() as progress:
        if method == "gaussian":
            outcome = run_gaussian(kw, loaded, data, heldout, unlabeled, device, progress)
        else:
            outcome = run_compression(
                kw, loaded, data, device, progress, heldout=heldout, unlabeled=unlabeled
            )
    inputs.update(outcome.inputs)
    for message in outcome.warnings:
        term.warn(message)
    gate = evaluate_gate(
        outcome.results["bound"],
        outcome.results["verdict"]["chance_error"],
        max_bound=kw["max_bound"],
        fail_if_vacuous=kw["fail_if_vacuous"],
        exit_zero=kw["exit_zero"],
    )
    from pacbound.report.document import build_report

    timings = dict(outcome.timings)
    timings["total"] = time.perf_counter() - start
    report = build_report(
        command="certify",
        inputs=inputs,
        options={**outcome.options, "threads": kw["threads"]},
        seeds={"seed": kw["seed"]},
        results=outcome.results,
        gate=gate.to_dict(),
        timings=timings,
        warnings=outcome.warnings,
        device=str(device),
    )
    text = dumps_json(report)
    for path, payload, option in outcome.files:
        write_atomic(path, payload, option)
    if kw["output"] is not None:
        write_atomic(kw["output"], text.encode(), "--output")
    from pacbound.report.summary import append_step_summary

    append_step_summary(report)
    if kw["as_json"]:
        emit_json(report)
    else:
        outcome.render(term, outcome.results)
    for reason in gate.reasons:
        click.echo(f"Gate failed: {reason}", err=True)
    ctx = click.get_current_context()
    ctx.exit(gate.exit_code)


def resolve_unlabeled(kw: dict[str, Any], data_kw: dict[str, Any]) -> Any:
    """``--unlabeled``: inputs only, read with the same format options as --data."""
    from pacbound.cli.model_options import resolve_features

    return resolve_features(kw["unlabeled"], split=kw["unlabeled_split"], **data_kw)

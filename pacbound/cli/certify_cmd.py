"""``pacbound certify``: load a checkpoint and its training data, certify, report, gate."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pacbound.bounds import format_up
from pacbound.cli.applicability import reject_inapplicable
from pacbound.cli.certify_compression import (
    RunOutcome,
    check_same_input_shape,
    compression_options,
    run_compression,
)
from pacbound.cli.gate import evaluate_gate, gate_options
from pacbound.cli.model_options import (
    data_kwargs,
    data_options,
    model_options,
    resolve_dataset,
    resolve_init,
    resolve_model,
)
from pacbound.cli.options import FLOAT, INT, json_option, threads_option
from pacbound.cli.preflight import check_disjoint_inputs, check_option_values
from pacbound.cli.terminal import Terminal, certificate_table, dumps_json, emit_json
from pacbound.errors import UsageError
from pacbound.report.files import (
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
    "not describe the evaluated model).",
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
            outcome = _run_gaussian(kw, loaded, data, heldout, unlabeled, device, progress)
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


def _run_gaussian(
    kw: dict[str, Any],
    loaded: Any,
    data: Any,
    heldout: Any,
    unlabeled: Any,
    device: Any,
    progress: Callable[[str, int], Callable[[int], None]],
) -> RunOutcome:
    from pacbound.certify.gaussian import certify_gaussian
    from pacbound.certify.gaussian_checkpoint import CheckpointInputs
    from pacbound.certify.gaussian_options import GaussianOptions, Posterior
    from pacbound.posterior.fit import TrainingRecipe
    from pacbound.posterior.priors import PriorMean, PriorTrainingRecipe, ScaleGrid

    options = GaussianOptions(
        prior=PriorMean(kw["prior"]),
        posterior=Posterior(kw["posterior"]),
        prior_scales=ScaleGrid.parse(kw["prior_scales"]),
        prior_fraction=kw["prior_fraction"],
        prior_recipe=PriorTrainingRecipe(
            epochs=kw["prior_epochs"],
            lr=kw["prior_lr"],
            lr_schedule=kw["prior_lr_schedule"],
            augment_shift=kw["prior_augment_shift"],
            seed=kw["seed"],
        ),
        training=TrainingRecipe(
            epochs=kw["posterior_epochs"],
            lr=kw["posterior_lr"],
            optimizer=kw["posterior_optimizer"],
            keep_best=kw["keep_best"],
            sigma_lr=kw["sigma_lr"],
            p_min=kw["p_min"],
            objective=kw["objective"],
            seed=kw["seed"],
        ),
        mc_passes=kw["mc_passes"],
        delta=kw["delta"],
        mc_delta=kw["mc_delta"],
        heldout_delta=kw["heldout_delta"],
        disagreement_delta=kw["disagreement_delta"],
        seed=kw["seed"],
        batch_size=kw["batch_size"],
        check_deterministic=not kw["allow_nondeterministic"],
        sampler=_sampler(kw["sampler"], loaded),
    )
    options.budget()  # validates the δ parts before any heavy work
    init_state = resolve_init(kw["init"], loaded, unsafe_allow_pickle=kw["unsafe_allow_pickle"])
    warnings: list[str] = []
    if init_state is not None:
        from pacbound.io.models import near_trained_init

        near = near_trained_init(init_state, loaded)
        if near is not None:
            warnings.append(near)
    checkpoint_inputs = None
    if unlabeled is not None:
        checkpoint_inputs = CheckpointInputs("unlabeled", unlabeled.x)
    elif heldout is not None:
        checkpoint_inputs = CheckpointInputs("heldout", heldout.x)
    cert = certify_gaussian(
        loaded.module,
        data.x,
        data.y,
        options=options,
        init_state=init_state,
        fixed_buffers=reference_buffers(kw, init_state),
        heldout=None if heldout is None else (heldout.x, heldout.y),
        checkpoint_inputs=checkpoint_inputs,
        device=device,
        progress=progress,
    )
    inputs: dict[str, Any] = {}
    if kw["init"] is not None:
        from pacbound.io import sha256_file

        inputs["init"] = {"path": str(kw["init"]), "sha256": sha256_file(kw["init"])}
    files: list[tuple[Path, bytes, str]] = []
    if kw["save_posterior"] is not None:
        from pacbound.posterior.io import posterior_bytes

        payload = posterior_bytes(cert.network, cert.prior_means, cert.prior_scale)
        inputs["posterior"] = {
            "path": str(kw["save_posterior"]),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "note": "written by this run",
        }
        files.append((kw["save_posterior"], payload, "--save-posterior"))
    from pacbound.certify.gaussian import prior_warning

    poor_prior = prior_warning(cert.prior, cert.verdict.chance_error)
    if poor_prior is not None:
        warnings.append(poor_prior)
    return RunOutcome(
        results=cert.to_dict(),
        options={"method": "gaussian", **options.to_dict(), "delta": options.delta},
        inputs=inputs,
        timings=dict(cert.timings),
        files=files,
        render=_render,
        warnings=warnings,
    )


def _sampler(choice: str, loaded: Any) -> Any:
    from pacbound.posterior.network import Sampler

    if choice != "auto":
        return Sampler(choice)
    program = loaded.provenance.checkpoint.format == "pt2"
    return Sampler.FUNCTIONAL if program else Sampler.LAYERS


def resolve_unlabeled(kw: dict[str, Any], data_kw: dict[str, Any]) -> Any:
    """``--unlabeled``: inputs only, read with the same format options as --data."""
    from pacbound.cli.model_options import resolve_features

    return resolve_features(kw["unlabeled"], split=kw["unlabeled_split"], **data_kw)


def reference_buffers(kw: dict[str, Any], init_state: dict[str, Any] | None) -> Any:
    """The data-independent values every buffer must equal: the --init file's, and for
    buffers it does not hold (non-persistent ones) a fresh build of --arch (``None`` when
    neither exists: then any buffer is refused)."""
    reference: dict[str, Any] = {}
    if kw.get("arch") is not None:
        from pacbound.io.architectures import build_module, parse_arch

        fresh = build_module(parse_arch(kw["arch"]), kw.get("arch_kwargs") or {})
        reference = {name: b.detach() for name, b in fresh.named_buffers()}
    if init_state is not None:
        reference.update(init_state)
    return reference or None


def _render(term: Terminal, res: dict[str, Any]) -> None:
    emp = res["empirical_risk"]
    table = certificate_table("pacbound certificate (PAC-Bayes-kl, Gaussian posterior)", res)
    table.add_row("n (examples in the bound)", str(res["n"]))
    table.add_row("KL(Q‖P)", f"{format_up(res['kl_nats'], 2)} nats")
    table.add_row("empirical risk of Q", f"{emp['estimate']:.6f} (Monte-Carlo estimate)")
    table.add_row(
        "  upper bound",
        f"{format_up(emp['upper_bound'], 6)} ({emp['draws']} draws, {emp['mc_passes']} passes)",
    )
    for part in res["delta_budget"]["parts"]:
        grid = f", grid of {part['grid_size']}" if part["grid_size"] > 1 else ""
        table.add_row(f"δ: {part['name']}", f"{part['delta']:.6g}{grid}")
    table.add_row("δ total", f"{res['delta_budget']['total']:.6g}")
    prior = res["prior"]
    table.add_row("prior", f"mean = {prior['mean']}, σ_p = {prior['scale']:.6g}")
    if prior.get("error"):
        err = prior["error"]
        table.add_row(
            "  prior mean's own error",
            f"{err['prior_split']:.4f} on S_prior, {err['bound_split']:.4f} on S_bound",
        )
    post = res["posterior"]
    table.add_row("posterior", f"{post['kind']}, σ median {post['sigma_median']:.4g}")
    for name, info in res["information_only"].items():
        table.add_row(f"({name}, information only)", format_up(info["value"], 4))
    if res["heldout"] is not None:
        h = res["heldout"]
        table.add_row(
            "held-out bound (checkpoint)",
            f"{format_up(h['bound'], 4)}  ({h['errors']}/{h['n']} errors, δ = {h['delta']:g}, "
            "separate statement)",
        )
    agree = res["agreement"]
    table.add_row(
        "Q vs checkpoint (bound data)",
        f"disagree on {agree['disagreement_rate']:.4f}; checkpoint's error "
        f"{agree['checkpoint_error_rate']:.4f} (information)",
    )
    if res["checkpoint"] is not None:
        c, d = res["checkpoint"], res["checkpoint"]["disagreement"]
        table.add_row(
            "bound on the checkpoint itself",
            f"{format_up(c['bound'], 4)}  (L(h) ≤ L(Q) + D, D ≤ {format_up(d['upper_bound'], 4)} "
            f"from {d['disagreements']}/{d['inputs']} {d['source']} inputs; "
            f"δ total {c['delta_total']:g})",
        )
    term.table(table)

"""``certify --method gaussian`` in the CLI: options → :func:`certify_gaussian`, files, and
the result table."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pacbound.bounds import format_up
from pacbound.cli.certify_compression import RunOutcome
from pacbound.cli.model_options import resolve_init
from pacbound.cli.terminal import Terminal, certificate_table


def run_gaussian(
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
        fixed_buffers=reference_buffers(kw, init_state, warnings),
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
        render=render_gaussian,
        warnings=warnings,
    )


def _sampler(choice: str, loaded: Any) -> Any:
    from pacbound.posterior.network import Sampler

    if choice != "auto":
        return Sampler(choice)
    program = loaded.provenance.checkpoint.format == "pt2"
    return Sampler.FUNCTIONAL if program else Sampler.LAYERS


def reference_buffers(
    kw: dict[str, Any], init_state: dict[str, Any] | None, warnings: list[str]
) -> Any:
    """The data-independent values every buffer must equal: the --init file's, and for
    buffers it does not hold (non-persistent ones) a fresh build of --arch (``None`` when
    neither exists: then any buffer is refused). An --init whose buffers differ from the
    fresh build gets a warning appended to ``warnings``: the file is trusted to have been
    saved before training, and buffers rarely change between a build and its init."""
    reference: dict[str, Any] = {}
    if kw.get("arch") is not None:
        from pacbound.io.architectures import build_module, parse_arch

        fresh = build_module(parse_arch(kw["arch"]), kw.get("arch_kwargs") or {})
        reference = {name: b.detach() for name, b in fresh.named_buffers()}
    if init_state is not None and reference:
        differ = [
            name
            for name, value in reference.items()
            if name in init_state
            and (
                value.shape != init_state[name].shape
                or not torch.equal(value.cpu(), init_state[name].detach().cpu().to(value.dtype))
            )
        ]
        if differ:
            warnings.append(
                f"the --init file's buffers {', '.join(differ[:4])} differ from a fresh build "
                "of --arch; they are trusted as fixed before training: make sure they hold "
                "no data"
            )
    if init_state is not None:
        reference.update(init_state)
    return reference or None


def render_gaussian(term: Terminal, res: dict[str, Any]) -> None:
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

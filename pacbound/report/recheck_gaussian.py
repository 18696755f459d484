"""Re-derive a Gaussian (PAC-Bayes-kl) certificate from the saved posterior file.

Mirrors :func:`pacbound.certify.gaussian.certify_gaussian` after the posterior is fitted: the
posterior file replaces the fitting, everything after it is redone (σ_p choice, KL, the
Monte-Carlo draws with the same seed stream, the bounds, the held-out bound).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pacbound.errors import InvalidInputError
from pacbound.report.recheck import (
    FieldCheck,
    _resolve,
    load_recorded_dataset,
    load_recorded_model,
)
from pacbound.report.recheck_budget import budget_from_options, recorded_grid, scale_checks


def _certificate_batch(opts: dict[str, Any]) -> int:
    """The batch size certify's own passes used (one example at a time for a model that
    is random by design), so the random streams line up."""
    return int(opts["batch_size"]) if opts.get("check_deterministic", True) else 1


def _network(
    model: torch.nn.Module,
    saved: Any,
    device: torch.device,
    fixed_buffers: Any,
    probe: Tensor,
    deterministic: bool,
    sampler: str,
) -> Any:
    """A stochastic copy of ``model`` whose μ and log σ are those of the posterior file,
    under the same invariant checks as certify (buffers against ``fixed_buffers``, the
    probe forward on ``probe``)."""
    from pacbound.posterior.network import Sampler, build_stochastic_network

    names = tuple(name for name, _ in model.named_parameters())
    if names != saved.names:
        raise InvalidInputError(
            f"the posterior file's parameters {list(saved.names)} do not match the model's "
            f"{list(names)}"
        )
    network = build_stochastic_network(
        model, fixed_buffers=fixed_buffers, sampler=Sampler(sampler)
    ).to(device)
    network.check_coverage(probe.to(device), batch_independence=deterministic)
    with torch.no_grad():
        for slot in network.slots:
            slot.mu.copy_(saved.mu[slot.name])
            slot.log_sigma.copy_(torch.log(saved.sigma[slot.name]))
    return network


def _fixed_buffers(
    report: dict[str, Any], loaded: Any, root: Path, unsafe_allow_pickle: bool
) -> Any:
    """The data-independent buffer values certify compared the model's buffers with: the
    init file's, or a fresh build of the recorded architecture."""
    from pacbound.io import load_init_state

    reference: dict[str, Tensor] = {}
    arch = report["inputs"]["model"]["provenance"].get("architecture")
    if arch is not None:
        from pacbound.io.architectures import build_module, parse_arch

        kwargs = report["inputs"]["model"]["provenance"].get("arch_kwargs") or {}
        fresh = build_module(parse_arch(arch), kwargs)
        reference = {name: b.detach() for name, b in fresh.named_buffers()}
    init = report["inputs"].get("init")
    if init is not None:
        path = _resolve(init["path"], root)
        reference.update(load_init_state(path, loaded, unsafe_allow_pickle=unsafe_allow_pickle))
    return reference or None


def _prior_mean_check(
    report: dict[str, Any], saved: Any, loaded: Any, root: Path, unsafe_allow_pickle: bool
) -> tuple[FieldCheck, dict[str, Tensor]]:
    """The prior mean the report names, re-derived (zero, the init file's weights, or a
    data-dependent prior retrained on S_prior), and whether the file's prior mean is that one.

    The re-derived prior, not the file's, is what the KL is then computed with: a forged
    prior mean in the file cannot lower the recomputed certificate.
    """
    from pacbound.io import load_init_state, refuse_trained_init

    kind = report["results"]["prior"]["mean"]
    if kind == "zero":
        reference = {n: torch.zeros_like(saved.prior_mu[n]) for n in saved.names}
        label = "prior.mean (file)"
    elif kind == "init":
        init = report["inputs"].get("init")
        if init is None:
            raise InvalidInputError("the report's prior is 'init' but it records no init file")
        state = load_init_state(
            _resolve(init["path"], root), loaded, unsafe_allow_pickle=unsafe_allow_pickle
        )
        refuse_trained_init(state, loaded)
        reference = {n: state[n].detach().cpu().to(saved.prior_mu[n].dtype) for n in saved.names}
        label = "prior.mean (file)"
    else:
        reference = _retrained_prior(report, saved, loaded, root, unsafe_allow_pickle)
        label = "prior.mean (retrained on S_prior, bit for bit)"
    same = all(torch.equal(reference[n], saved.prior_mu[n]) for n in saved.names)
    return FieldCheck(label, kind, kind if same else "≠ file"), reference


def _prior_recipe(recorded: object) -> Any:
    from pacbound.posterior.priors import PriorTrainingRecipe

    if not isinstance(recorded, dict):
        raise InvalidInputError(
            "the report's prior is 'data' but options.prior_training is missing; the prior "
            "cannot be retrained"
        )
    fields = {"lr_schedule": "constant", **recorded}  # reports from before the schedule existed
    try:
        return PriorTrainingRecipe(**fields)
    except TypeError as exc:
        raise InvalidInputError(
            f"the report's options.prior_training cannot be read by this version ({exc}); "
            "verify it with the pacbound version that wrote it"
        ) from None


def _retrained_prior(
    report: dict[str, Any], saved: Any, loaded: Any, root: Path, unsafe_allow_pickle: bool
) -> dict[str, Tensor]:
    """The data-dependent prior mean retrained on S_prior with the recorded recipe and seed.

    Training is deterministic for a given torch version, device and thread count; elsewhere
    floating-point reduction order may change the result, and verification then reports a
    disagreement rather than accepting a prior it cannot reproduce.
    """
    from pacbound.certify.gaussian import data_dependent_prior
    from pacbound.io import load_init_state, refuse_trained_init

    opts = report["options"]
    init = report["inputs"].get("init")
    init_state = None
    if init is not None:
        init_state = load_init_state(
            _resolve(init["path"], root), loaded, unsafe_allow_pickle=unsafe_allow_pickle
        )
        refuse_trained_init(init_state, loaded)
    data = load_recorded_dataset(report["inputs"]["data"], root)
    device = next(loaded.module.parameters()).device
    _, prior_model = data_dependent_prior(
        loaded.module,
        data.x,
        data.y,
        prior_fraction=opts["prior_fraction"],
        recipe=_prior_recipe(opts.get("prior_training")),
        seed=opts["seed"],
        init_state=init_state,
        device=device,
    )
    return {
        name: p.detach().cpu().to(saved.prior_mu[name].dtype)
        for name, p in prior_model.named_parameters()
    }


def _bound_sample(
    res: dict[str, Any], opts: dict[str, Any], data: Any
) -> tuple[list[FieldCheck], Any, Tensor]:
    """S_bound: all of S, or for a data prior the bound part of the split re-derived from the
    recorded seed and fraction (the reported split must be that one)."""
    from pacbound.posterior.priors import split_data

    if res["prior"]["mean"] != "data":
        return [], data.x, data.y
    split = split_data(data.n, prior_fraction=opts["prior_fraction"], seed=opts["seed"])
    reported = res["prior"]["split"]
    checks = [
        FieldCheck("prior.split.indices_sha256", reported["indices_sha256"], split.sha256),
        FieldCheck("prior.split", reported, split.to_dict()),
    ]
    return checks, data.x[split.bound_indices], data.y[split.bound_indices]


def _certificate_checks(
    res: dict[str, Any],
    opts: dict[str, Any],
    network: Any,
    kl: float,
    budget: Any,
    x: Any,
    y: Tensor,
    device: torch.device,
) -> tuple[list[FieldCheck], Any]:
    """The Monte-Carlo draws replayed with certify's seed stream, the Chernoff and kl bounds
    (and the information-only ones) at the re-derived δ parts; returns the certificate too."""
    from pacbound.bounds import (
        mc_upper_per_example,
        pac_bayes_catoni_grid,
        pac_bayes_classic,
        pac_bayes_kl,
        pac_bayes_quad,
    )
    from pacbound.certify.gaussian import CERTIFIED_CLASSIFIER
    from pacbound.certify.gaussian_options import SEED_OFFSETS
    from pacbound.posterior.risk import count_stochastic_errors

    n = int(x.shape[0])
    pb, mc_part = budget.part("pac-bayes"), budget.part("monte-carlo")
    generator = torch.Generator(device=device).manual_seed(
        opts["seed"] + SEED_OFFSETS["monte_carlo"]
    )
    count = count_stochastic_errors(
        network,
        x,
        y,
        passes=opts["mc_passes"],
        generator=generator,
        batch_size=_certificate_batch(opts),
        device=device,
    )
    mc = mc_upper_per_example(count.rate, n=n, passes=opts["mc_passes"], delta=mc_part.delta)
    cert = pac_bayes_kl(mc.value, kl=kl, n=n, delta=pb.per_choice)
    emp = res["empirical_risk"]
    checks = [
        FieldCheck("certified_classifier", res["certified_classifier"], CERTIFIED_CLASSIFIER),
        FieldCheck("inequality", res["inequality"], cert.method),
        FieldCheck("n", res["n"], n),
        FieldCheck("kl_nats", res["kl_nats"], kl),
        FieldCheck("empirical_risk.estimate", emp["estimate"], count.rate),
        FieldCheck("empirical_risk.draws", emp["draws"], count.evaluations),
        FieldCheck("empirical_risk.mc_passes", emp["mc_passes"], opts["mc_passes"]),
        FieldCheck("empirical_risk.upper_bound", emp["upper_bound"], mc.value),
        FieldCheck("delta_budget", res["delta_budget"], budget.to_dict()),
        FieldCheck("bound", res["bound"], cert.value),
        FieldCheck("certificate_terms", res["certificate_terms"], cert.to_dict()),
    ]
    information = {
        "classic": pac_bayes_classic,
        "quad": pac_bayes_quad,
        "catoni_grid": pac_bayes_catoni_grid,
    }
    for name, reported in res["information_only"].items():
        if name in information:
            value = information[name](mc.value, kl=kl, n=n, delta=pb.per_choice).value
            checks.append(FieldCheck(f"information_only.{name}", reported["value"], value))
    return checks, cert


def recheck_gaussian(
    report: dict[str, Any], *, root: Path, device: torch.device, unsafe_allow_pickle: bool = False
) -> list[FieldCheck]:
    from pacbound.certify.common import Verdict, model_num_outputs
    from pacbound.certify.compressed_checkpoint import HELDOUT_CLASSIFIER
    from pacbound.posterior.io import load_posterior
    from pacbound.posterior.kl import gaussian_kl
    from pacbound.report.recheck_heldout import deterministic_test_set, recheck_heldout

    res, opts = report["results"], report["options"]
    loaded = load_recorded_model(report, root, device, unsafe_allow_pickle=unsafe_allow_pickle)
    model = loaded.module.to(device).eval()
    data = load_recorded_dataset(report["inputs"]["data"], root)
    saved = load_posterior(_resolve(report["inputs"]["posterior"]["path"], root))
    network = _network(
        model,
        saved,
        device,
        _fixed_buffers(report, loaded, root, unsafe_allow_pickle),
        data.x[: min(int(opts["batch_size"]), data.n)],
        bool(opts.get("check_deterministic", True)),
        str(opts.get("sampler", "layers")),
    )
    prior_check, prior_mu = _prior_mean_check(report, saved, loaded, root, unsafe_allow_pickle)
    checks = [FieldCheck("prior.mean", res["prior"]["mean"], opts.get("prior")), prior_check]
    split_checks, x, y = _bound_sample(res, opts, data)
    checks += split_checks

    grid = recorded_grid(opts)
    prior_means = [prior_mu[name].to(device) for name in saved.names]
    grid_checks, sigma_p = scale_checks(res, opts, grid, network, prior_means, saved)
    checks += grid_checks
    budget = budget_from_options(opts, grid)
    # KL against the re-derived prior mean and σ_p (the file's when the checks above agree).
    kl = gaussian_kl((saved.mu[n], saved.sigma[n], prior_mu[n], sigma_p) for n in saved.names)
    cert_checks, cert = _certificate_checks(res, opts, network, kl, budget, x, y, device)
    checks += cert_checks
    # chance level 1 − 1/K from the model's own outputs, as certify computes it
    verdict = Verdict(cert.value, model_num_outputs(model, data.x, device)).to_dict()
    sigmas = torch.cat([saved.sigma[name].flatten() for name in saved.names])
    post = res["posterior"]
    checks += [
        FieldCheck("verdict", res["verdict"], verdict),
        FieldCheck("posterior.sigma_min", post["sigma_min"], float(sigmas.min())),
        FieldCheck("posterior.sigma_median", post["sigma_median"], float(sigmas.median())),
        FieldCheck("posterior.sigma_max", post["sigma_max"], float(sigmas.max())),
    ]
    checks += _checkpoint_checks(report, root, model, network, cert, budget, x, y, device)
    heldout_delta = opts.get("heldout_delta")
    checks += recheck_heldout(
        report,
        root,
        field="heldout",
        recompute=lambda held: {
            "certified_classifier": HELDOUT_CLASSIFIER,
            **deterministic_test_set(
                model,
                held,
                delta=opts["delta"] if heldout_delta is None else heldout_delta,
                batch_size=opts["batch_size"],
                device=device,
            ),
        },
    )
    return checks


def _checkpoint_checks(
    report: dict[str, Any],
    root: Path,
    model: torch.nn.Module,
    network: Any,
    cert: Any,
    budget: Any,
    x: Tensor,
    y: Tensor,
    device: torch.device,
) -> list[FieldCheck]:
    """Q's agreement with the checkpoint on S_bound and the certificate for the checkpoint
    itself, recomputed with certify's code and random streams."""
    from pacbound.certify.gaussian_checkpoint import agreement_on_bound_data
    from pacbound.certify.gaussian_options import GaussianOptions, random_stream
    from pacbound.posterior.risk import count_disagreements
    from pacbound.report.recheck_statements import recheck_checkpoint_statement

    res, opts = report["results"], report["options"]
    seed, batch = opts["seed"], _certificate_batch(opts)
    checks = []
    if "agreement" in res:
        agreement = agreement_on_bound_data(
            network,
            model,
            x,
            y,
            generator=random_stream(seed, "agreement", device),
            batch_size=batch,
            device=device,
        )
        checks.append(FieldCheck("agreement", res["agreement"], agreement))
    delta_d = GaussianOptions(
        delta=opts["delta"], disagreement_delta=opts.get("disagreement_delta")
    ).resolved_disagreement_delta

    def count(inputs: Tensor) -> tuple[int, int]:
        dis = count_disagreements(
            network,
            model,
            inputs,
            passes=1,
            generator=random_stream(seed, "disagreement", device),
            batch_size=batch,
            device=device,
        )
        return dis.errors, dis.evaluations

    checks += recheck_checkpoint_statement(
        report,
        root,
        certificate=cert,
        certified="Q",
        delta_certified=budget.total,
        delta_disagreement=delta_d,
        count=count,
    )
    return checks

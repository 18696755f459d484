"""``certify --method gaussian``: a PAC-Bayes-kl certificate for a Gaussian posterior.

Pipeline (MATH.md §2–5, §8):

1. prior mean: the init weights, zero, or trained on a seeded prior split S_prior;
   the bound sample S_bound is the rest (or all of S for data-free priors);
2. posterior: isotropic σ by search around the checkpoint, optionally refined into a
   diagonal posterior trained on a bound surrogate;
3. prior scale σ_p: the grid value with the smallest KL; the grid costs ln G (δ/G each);
4. empirical risk of Q on S_bound: n·K fresh per-example draws, Chernoff upper bound with δ′;
5. certificate: the kl bound with that upper bound, n = |S_bound|, δ_PB/G.

The certified classifier is the stochastic network Q, not the checkpoint's point weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.bounds import (
    BoundResult,
    DeltaBudget,
    DeltaPart,
    mc_upper_per_example,
    pac_bayes_catoni_grid,
    pac_bayes_classic,
    pac_bayes_kl,
    pac_bayes_quad,
    test_set_bound,
)
from pacbound.bounds.validation import check_count, check_delta
from pacbound.certify.common import (
    ProgressFactory,
    Timer,
    Verdict,
    check_deterministic,
    model_num_outputs,
    no_progress,
    take_rows,
)
from pacbound.certify.gaussian_checkpoint import (
    CheckpointInputs,
    agreement_on_bound_data,
    checkpoint_certificate,
)
from pacbound.certify.gaussian_options import (
    SEED_OFFSETS,
    GaussianOptions,
    Posterior,
    check_training_seed,
    random_stream,
)
from pacbound.errors import InvalidInputError
from pacbound.posterior.fit import (
    TrainingHistory,
    estimate_bound,
    kl_over_grid,
    kl_sufficient_stats,
    search_isotropic_sigma,
    train_diagonal_posterior,
)
from pacbound.posterior.kl import gaussian_kl
from pacbound.posterior.network import StochasticNetwork, build_stochastic_network
from pacbound.posterior.priors import (
    DataSplit,
    PriorMean,
    PriorTrainingRecipe,
    split_data,
    train_prior_mean,
)
from pacbound.posterior.risk import count_errors, count_stochastic_errors

CERTIFIED_CLASSIFIER = (
    "the Gaussian posterior Q = N(mu, diag sigma^2) over the weights: a stochastic "
    "classifier that draws fresh weights for every prediction, NOT the checkpoint's "
    "point weights"
)


@dataclass(frozen=True)
class GaussianCertificate:
    """The outcome of a Gaussian certification run (all numbers at full precision)."""

    certificate: BoundResult
    monte_carlo: BoundResult
    information: dict[str, BoundResult]
    budget: DeltaBudget
    verdict: Verdict
    kl_nats: float
    n_bound: int
    empirical_risk_estimate: float
    prior: dict[str, Any]
    posterior: dict[str, Any]
    heldout: BoundResult | None
    heldout_budget: DeltaBudget | None
    agreement: dict[str, Any]
    checkpoint: dict[str, Any] | None
    timings: dict[str, float]
    network: StochasticNetwork = field(repr=False)
    prior_means: list[Tensor] = field(repr=False)
    prior_scale: float
    options: GaussianOptions = field(repr=False)

    @property
    def value(self) -> float:
        return self.certificate.value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": "gaussian",
            "certified_classifier": CERTIFIED_CLASSIFIER,
            "bound": self.certificate.value,
            "inequality": self.certificate.method,
            "kl_nats": self.kl_nats,
            "n": self.n_bound,
            "empirical_risk": {
                "estimate": self.empirical_risk_estimate,
                "upper_bound": self.monte_carlo.value,
                "draws": self.monte_carlo.n,
                "mc_passes": self.options.mc_passes,
            },
            "verdict": self.verdict.to_dict(),
            "delta_budget": self.budget.to_dict(),
            "certificate_terms": self.certificate.to_dict(),
            "information_only": {k: v.to_dict() for k, v in self.information.items()},
            "prior": self.prior,
            "posterior": self.posterior,
            "heldout": None,
        }
        if self.heldout is not None and self.heldout_budget is not None:
            out["heldout"] = {
                "certified_classifier": "the checkpoint's deterministic point weights",
                "bound": self.heldout.value,
                "errors": int(self.heldout.terms["errors"]),
                "n": self.heldout.n,
                "delta": self.heldout.delta,
                "note": "a separate statement with its own delta",
            }
        out["agreement"] = self.agreement
        out["checkpoint"] = self.checkpoint
        return out


def _prior_means(
    kind: PriorMean,
    model: nn.Module,
    init_state: dict[str, Tensor] | None,
) -> list[Tensor]:
    names = [name for name, _ in model.named_parameters()]
    if kind is PriorMean.ZERO:
        return [torch.zeros_like(p.detach()) for _, p in model.named_parameters()]
    if init_state is None:
        raise InvalidInputError(
            "--prior init needs the initial weights: pass --init PATH (saved before training)",
            param="--init",
        )
    return [
        init_state[name].detach().to(p.device, p.dtype)
        for name, p in zip(names, model.parameters(), strict=True)
    ]


def _initial_model(model: nn.Module, init_state: dict[str, Tensor] | None, seed: int) -> nn.Module:
    """A data-independent starting point for the prior mean: the init weights, or a fresh
    seeded initialization of the architecture."""
    fresh = copy.deepcopy(model)
    if init_state is not None:
        with torch.no_grad():
            for name, p in fresh.named_parameters():
                p.copy_(init_state[name])
        return fresh
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + SEED_OFFSETS["prior_init"])
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    kept = [
        name
        for (name, p), q in zip(fresh.named_parameters(), model.parameters(), strict=True)
        if torch.equal(p, q)
    ]
    if kept:
        # Those would start the prior at the trained weights, which have seen S_bound.
        raise InvalidInputError(
            f"--prior data without --init: {len(kept)} parameter(s) could not be re-initialized "
            f"(no reset_parameters), e.g. {', '.join(kept[:3])}; pass --init PATH with the "
            "weights saved before training",
            param="--init",
        )
    return fresh


def data_dependent_prior(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    prior_fraction: float,
    recipe: PriorTrainingRecipe,
    seed: int,
    init_state: dict[str, Tensor] | None,
    device: torch.device,
    progress: ProgressFactory = no_progress,
) -> tuple[DataSplit, nn.Module]:
    """The seeded split of S and the prior mean trained on S_prior only (from the init
    weights, or a seeded fresh initialisation). Deterministic for a seed, so ``pacbound
    verify`` re-runs it to check a saved prior mean."""
    split = split_data(x.shape[0], prior_fraction=prior_fraction, seed=seed)
    prior_model = _initial_model(model, init_state, seed).to(device)
    hook = progress("training prior on S_prior", recipe.epochs * len(split.prior_indices))
    train_prior_mean(
        prior_model,
        take_rows(x, split.prior_indices),
        y[split.prior_indices],
        recipe,
        device=device,
        progress=hook,
    )
    return split, prior_model


def certify_gaussian(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    options: GaussianOptions,
    init_state: dict[str, Tensor] | None = None,
    fixed_buffers: Mapping[str, Tensor] | None = None,
    heldout: tuple[Tensor, Tensor] | None = None,
    checkpoint_inputs: CheckpointInputs | None = None,
    device: torch.device | None = None,
    progress: ProgressFactory = no_progress,
) -> GaussianCertificate:
    """Run the whole Gaussian pipeline on the training sample (x, y) = S.

    ``fixed_buffers``: the data-independent values of the model's buffers (default: those
    in ``init_state``); every buffer must equal them. ``checkpoint_inputs``: inputs never
    used for anything else on which Q's disagreement with the checkpoint is bounded, giving
    a certificate for the checkpoint itself (MATH.md §11).
    """
    dev = device or torch.device("cpu")
    budget = options.budget()
    check_count(options.mc_passes, "--mc-passes")
    timer = Timer()
    model = model.to(dev).eval()
    # Buffers are compared with their data-independent values before any forward pass
    # (a forward may update a counter buffer).
    network = build_stochastic_network(
        model,
        fixed_buffers=init_state if fixed_buffers is None else fixed_buffers,
        sampler=options.sampler,
    ).to(dev)
    if options.check_deterministic:
        check_deterministic(model, x, dev)
    num_outputs = model_num_outputs(model, x, dev)
    network.check_coverage(
        # at the certification batch size; a slice reads streamed features as a tensor
        x[: min(options.batch_size, int(x.shape[0]))].to(dev),
        batch_independence=options.check_deterministic,
    )
    grid = options.prior_scales
    delta_pb = budget.part("pac-bayes").per_choice
    split: DataSplit | None = None
    prior_info: dict[str, Any] = {"mean": options.prior.value}
    with timer.phase("prior"):
        if options.prior is PriorMean.DATA:
            split, prior_model = data_dependent_prior(
                model,
                x,
                y,
                prior_fraction=options.prior_fraction,
                recipe=options.prior_recipe,
                seed=options.seed,
                init_state=init_state,
                device=dev,
                progress=progress,
            )
            prior_means = [p.detach().clone() for p in prior_model.parameters()]
            x_bound = take_rows(x, split.bound_indices)
            y_bound = y[split.bound_indices]
            prior_info["split"] = split.to_dict()
            prior_info["error"] = _prior_errors(prior_model, x, y, split, options, dev)
            prior_info["init_source"] = (
                "init weights" if init_state is not None else "seeded fresh init"
            )
        else:
            prior_means = _prior_means(options.prior, model, init_state)
            x_bound, y_bound = x, y
    # Q starts at the checkpoint for every prior: the certificate is about the user's model.
    n_bound = int(x_bound.shape[0])
    search_gen = torch.Generator(device=dev).manual_seed(options.seed + SEED_OFFSETS["search"])
    perm = torch.randperm(n_bound, generator=torch.Generator().manual_seed(options.seed))
    subset = perm[: min(options.search_examples, n_bound)]
    with timer.phase("posterior"):
        hook = progress("searching isotropic sigma", 41 * int(subset.numel()))
        search = search_isotropic_sigma(
            network,
            prior_means,
            grid,
            x_bound[subset],
            y_bound[subset],
            n_bound=n_bound,
            delta_pac_bayes=budget.part("pac-bayes").delta,
            generator=search_gen,
            batch_size=options.batch_size,
            device=dev,
            progress=hook,
        )
        history: TrainingHistory | None = None
        if options.posterior is Posterior.DIAGONAL:
            recipe = options.training
            check_training_seed(recipe.seed, options.seed)
            log_term = math.log(2.0 * math.sqrt(n_bound) / delta_pb)
            hook = progress("training diagonal posterior", recipe.epochs * int(x.shape[0]))
            select_gen = torch.Generator(device=dev).manual_seed(
                options.seed + SEED_OFFSETS["selection"]
            )
            x_select, y_select = x_bound[subset], y_bound[subset]

            def select(net: StochasticNetwork) -> float:
                return estimate_bound(
                    net,
                    prior_means,
                    grid,
                    x_select,
                    y_select,
                    n_bound=n_bound,
                    log_term=log_term,
                    generator=select_gen,
                    batch_size=options.batch_size,
                    device=dev,
                )[1]

            history = train_diagonal_posterior(
                network,
                prior_means,
                grid.scales[search.prior_index],
                x,
                y,
                recipe,
                n_bound=n_bound,
                log_term=log_term,
                device=dev,
                select=select,
                progress=hook,
            )
    network.check_buffers_unchanged()
    with timer.phase("kl"):
        kls = kl_over_grid(kl_sufficient_stats(network, prior_means), grid)
        j = int(kls.argmin())
        sigma_p = grid.scales[j]
        kl = gaussian_kl(
            (s.mu, torch.exp(s.log_sigma), m.to(dev), sigma_p)
            for s, m in zip(network.slots, prior_means, strict=True)
        )
    with timer.phase("monte_carlo"):
        mc_gen = torch.Generator(device=dev).manual_seed(options.seed + SEED_OFFSETS["monte_carlo"])
        hook = progress("Monte-Carlo risk (fresh draws)", options.mc_passes * n_bound)
        count = count_stochastic_errors(
            network,
            x_bound,
            y_bound,
            passes=options.mc_passes,
            generator=mc_gen,
            batch_size=options.certificate_batch_size,
            device=dev,
            progress=hook,
        )
        mc = mc_upper_per_example(
            count.rate, n=n_bound, passes=options.mc_passes, delta=budget.part("monte-carlo").delta
        )
    certificate = pac_bayes_kl(mc.value, kl=kl, n=n_bound, delta=delta_pb)
    information = {
        "classic": pac_bayes_classic(mc.value, kl=kl, n=n_bound, delta=delta_pb),
        "quad": pac_bayes_quad(mc.value, kl=kl, n=n_bound, delta=delta_pb),
        "catoni_grid": pac_bayes_catoni_grid(mc.value, kl=kl, n=n_bound, delta=delta_pb),
    }
    with timer.phase("agreement"):
        agreement = agreement_on_bound_data(
            network,
            model,
            x_bound,
            y_bound,
            generator=random_stream(options.seed, "agreement", dev),
            batch_size=options.certificate_batch_size,
            device=dev,
        )
        checkpoint = None
        if checkpoint_inputs is not None:
            checkpoint = checkpoint_certificate(
                network,
                model,
                certificate,
                checkpoint_inputs,
                delta_certified=budget.total,
                delta_disagreement=options.resolved_disagreement_delta,
                generator=random_stream(options.seed, "disagreement", dev),
                batch_size=options.certificate_batch_size,
                device=dev,
            )
    heldout_result = heldout_budget = None
    if heldout is not None:
        with timer.phase("heldout"):
            hdelta = options.delta if options.heldout_delta is None else options.heldout_delta
            heldout_budget = DeltaBudget(
                check_delta(hdelta, "--heldout-delta"),
                (DeltaPart("held-out", hdelta, 1, "binomial tail on the held-out set"),),
            )
            hx, hy = heldout
            hcount = count_errors(model, hx, hy, batch_size=options.batch_size, device=dev)
            heldout_result = test_set_bound(hcount.rate, n=hcount.evaluations, delta=hdelta)
    sigmas = torch.cat([torch.exp(s.log_sigma.detach()).flatten() for s in network.slots])
    prior_info.update({"scale": sigma_p, "scale_index": j, "grid": grid.to_dict()})
    posterior_info = {
        "kind": options.posterior.value,
        "num_parameters": network.num_parameters(),
        "sigma_isotropic_search": search.sigma_q,
        "sigma_min": float(sigmas.min()),
        "sigma_median": float(sigmas.median()),
        "sigma_max": float(sigmas.max()),
        "training_objective_per_epoch": (
            [] if history is None else list(history.objective_per_epoch)
        ),
        "training": None if history is None else history.to_dict(),
        "isotropic_search": [
            {"sigma": sq, "estimated_risk": risk, "estimated_bound": est}
            for sq, risk, est in search.candidates
        ],
    }
    return GaussianCertificate(
        certificate=certificate,
        monte_carlo=mc,
        information=information,
        budget=budget,
        verdict=Verdict(certificate.value, num_outputs),
        kl_nats=kl,
        n_bound=n_bound,
        empirical_risk_estimate=count.rate,
        prior=prior_info,
        posterior=posterior_info,
        heldout=heldout_result,
        heldout_budget=heldout_budget,
        agreement=agreement,
        checkpoint=checkpoint,
        timings=dict(timer.seconds),
        network=network,
        prior_means=prior_means,
        prior_scale=sigma_p,
        options=options,
    )


def _prior_errors(
    prior_model: nn.Module,
    x: Tensor,
    y: Tensor,
    split: DataSplit,
    options: GaussianOptions,
    device: torch.device,
) -> dict[str, float]:
    """The data-dependent prior mean's own 0-1 error on S_prior and on S_bound (information:
    a poor prior makes a loose bound, and the user should know why)."""
    prior_model.eval()
    out = {}
    for part, rows in (("prior_split", split.prior_indices), ("bound_split", split.bound_indices)):
        count = count_errors(
            prior_model,
            take_rows(x, rows),
            y[rows],
            batch_size=options.batch_size,
            device=device,
        )
        out[part] = count.rate
    return out


#: A data-dependent prior whose error on S_bound exceeds this share of the chance error
#: gets a warning (it was trained too little, or with an unsuitable recipe).
POOR_PRIOR_SHARE = 0.5


def prior_warning(prior: dict[str, Any], chance_error: float) -> str | None:
    """A warning line when the data-dependent prior is poor, else ``None``."""
    error = prior.get("error")
    if not error or error["bound_split"] <= POOR_PRIOR_SHARE * chance_error:
        return None
    return (
        f"the data-dependent prior is poor: error {error['prior_split']:.3f} on S_prior and "
        f"{error['bound_split']:.3f} on S_bound (chance {chance_error:.3f}); the bound will be "
        "loose. Train it longer or with another rate (--prior-epochs, --prior-lr)"
    )


@torch.no_grad()
def stochastic_error(
    network: StochasticNetwork,
    x: Tensor,
    y: Tensor,
    *,
    passes: int,
    seed: int,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> float:
    """The posterior's error on (x, y) with per-example draws (e.g. on a test set)."""
    dev = device or torch.device("cpu")
    gen = torch.Generator(device=dev).manual_seed(seed)
    return count_stochastic_errors(
        network, x, y, passes=passes, generator=gen, batch_size=batch_size, device=dev
    ).rate

"""``certify --method gaussian``: a PAC-Bayes-kl certificate for a Gaussian posterior.

Pipeline (MATH.md §2–5, §8), in two phases (``docs/architecture.md``):

* **choose** (:func:`choose_hypothesis`): the prior mean (the init weights, zero, or trained
  on a seeded prior split S_prior; S_bound is the rest) and the posterior Q, fitted around
  the checkpoint by its family (:data:`pacbound.posterior.families.FAMILIES`: an isotropic
  σ by search, optionally refined into a trained diagonal posterior);
* **certify** (:func:`certify_hypothesis`, also run by ``verify`` on a saved posterior):
  σ_p, the grid value with the smallest KL (the grid costs ln G: δ/G each); the empirical
  risk of Q on S_bound from n·K fresh per-example draws (or K·n/B per-batch draws,
  ``--mc-draws``: :mod:`~pacbound.certify.gaussian_monte_carlo`) with its Chernoff upper
  bound at δ′;
  the kl bound with that upper bound, n = |S_bound|, δ_PB/G; the statements about the
  checkpoint.

The certified classifier is the stochastic network Q, not the checkpoint's point weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.bounds import (
    pac_bayes_catoni_grid,
    pac_bayes_classic,
    pac_bayes_kl,
    pac_bayes_quad,
)
from pacbound.bounds.validation import check_count
from pacbound.certify.common import (
    ProgressFactory,
    Timer,
    Verdict,
    check_deterministic,
    check_eval_mode,
    model_num_outputs,
    no_progress,
)
from pacbound.certify.gaussian_certificate import GaussianCertificate
from pacbound.certify.gaussian_checkpoint import (
    CheckpointInputs,
    checkpoint_statements,
    heldout_statement,
)
from pacbound.certify.gaussian_monte_carlo import monte_carlo_risk
from pacbound.certify.gaussian_options import (
    GaussianOptions,
    check_training_seed,
    random_stream,
)
from pacbound.certify.gaussian_prior import PriorChoice, derive_prior
from pacbound.errors import InvalidInputError
from pacbound.posterior.families import FAMILIES
from pacbound.posterior.family import FitData
from pacbound.posterior.fit import kl_over_grid
from pacbound.posterior.network import StochasticNetwork, auto_sampler, build_stochastic_network
from pacbound.posterior.normalization import (
    check_affine_form,
    normalization_treatment,
    refuse_state_changes,
    to_channel_affine,
)
from pacbound.posterior.probe import outputs_agree


@dataclass(frozen=True)
class GaussianHypothesis:
    """A chosen (or loaded) hypothesis: Q — the network's μ and log σ, of family ``family``
    — with its prior mean and split; ``choice`` records how Q was chosen (the report's
    ``posterior`` fields that ``verify`` does not redo; empty for a loaded Q)."""

    network: StochasticNetwork = field(repr=False)
    family: str
    prior: PriorChoice = field(repr=False)
    choice: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CertifyInputs:
    """What the certify phase reads besides the hypothesis: the checkpoint h (checked by
    :func:`prepare_network`), S, the held-out set and the inputs for the checkpoint's own
    certificate (never used for anything else)."""

    model: nn.Module
    x: Tensor
    y: Tensor
    num_outputs: int
    heldout: tuple[Tensor, Tensor] | None = None
    checkpoint_inputs: CheckpointInputs | None = None


def prepare_network(
    model: nn.Module,
    x: Tensor,
    *,
    options: GaussianOptions,
    fixed_buffers: Mapping[str, Tensor] | None,
    device: torch.device,
) -> tuple[StochasticNetwork, int]:
    """The stochastic copy of ``model`` (on ``device``, eval mode) under every invariant
    check, and the model's number of outputs K. Run before anything else by ``certify``
    and ``verify`` alike."""
    options.budget()
    check_count(options.mc_passes, "--mc-passes")
    model.to(device)
    check_eval_mode(model)
    # Eval-mode BatchNorm becomes its per-channel affine map (a, c), covered by the
    # posterior (MATH.md §10): its running statistics are no buffers of the hypothesis.
    affine = to_channel_affine(model)
    # Buffers are compared with their data-independent values before any forward pass
    # (a forward may update a counter buffer).
    network = build_stochastic_network(
        affine,
        fixed_buffers=fixed_buffers,
        sampler=options.sampler  # None: --sampler auto, probed on a few inputs
        or auto_sampler(affine, x[:8], batch_independence=options.check_deterministic),
        max_memory=options.max_memory,
    ).to(device)
    batch = x[: min(options.batch_size, int(x.shape[0]))].to(device)
    refuse_state_changes(model, batch)
    check_affine_form(model, affine, batch)
    if options.check_deterministic:
        check_deterministic(model, x, device)
    num_outputs = model_num_outputs(model, x, device)
    check_mean_is_model(network, model, batch)
    network.check_coverage(
        # at the certification batch size; a slice reads streamed features as a tensor
        x[: min(options.batch_size, int(x.shape[0]))].to(device),
        batch_independence=options.check_deterministic,
    )
    return network, num_outputs


@torch.no_grad()
def check_mean_is_model(network: StochasticNetwork, model: nn.Module, x: Tensor) -> None:
    """Refuse a network that, at its mean (the checkpoint), does not compute the model's
    outputs on ``x``: whatever replaced a layer (a Gaussian layer, BatchNorm's affine form)
    dropped something the model does (a forward replaced on an instance, a hook, a BatchNorm
    on batch statistics), so Q would be centred on another classifier than the checkpoint."""
    network.set_mode("mean")
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # a model random by design: same draws
        torch.manual_seed(0)
        mean = network(x)
        torch.manual_seed(0)
        reference = model(x)
    if not outputs_agree(mean, reference):
        raise InvalidInputError(
            "the posterior's network at its mean (the checkpoint's weights) does not compute "
            "the model's outputs: a layer computes otherwise than its type says (a forward "
            "replaced on the instance, hooks, a normalization on batch statistics). Certify "
            "with --sampler functional, or remove the alteration"
        )


def choose_hypothesis(
    model: nn.Module,
    network: StochasticNetwork,
    x: Tensor,
    y: Tensor,
    *,
    options: GaussianOptions,
    init_state: dict[str, Tensor] | None,
    device: torch.device,
    timer: Timer,
    progress: ProgressFactory = no_progress,
) -> GaussianHypothesis:
    """The choice phase: the prior, then Q fitted by its family (``network`` in place).
    Q starts at the checkpoint for every prior: the certificate is about the user's model."""
    with timer.phase("prior"):
        prior = derive_prior(
            model, x, y, options=options, init_state=init_state, device=device, progress=progress
        )
    x_bound, y_bound = prior.bound_sample(x, y)
    n_bound = int(x_bound.shape[0])
    perm = torch.randperm(n_bound, generator=torch.Generator().manual_seed(options.seed))
    subset = perm[: min(options.search_examples, n_bound)]
    family = FAMILIES[options.posterior]
    if family.trained:
        check_training_seed(options.training.seed, options.seed)
    pac_bayes = options.budget().part("pac-bayes")
    data = FitData(
        x_search=x_bound[subset],
        y_search=y_bound[subset],
        x_train=x,
        y_train=y,
        n_bound=n_bound,
        grid=options.prior_scales,
        delta_pac_bayes=pac_bayes.delta,
        delta_per_choice=pac_bayes.per_choice,
        batch_size=options.batch_size,
        training=options.training,
        search_stream=random_stream(options.seed, "search"),
        selection_stream=random_stream(options.seed, "selection"),
        device=device,
        progress=progress,
    )
    with timer.phase("posterior"):
        choice = family.fit(network, prior.means, data)
    return GaussianHypothesis(network, options.posterior, prior, choice)


def certify_hypothesis(
    hypothesis: GaussianHypothesis,
    inputs: CertifyInputs,
    *,
    options: GaussianOptions,
    device: torch.device,
    timer: Timer,
    progress: ProgressFactory = no_progress,
) -> GaussianCertificate:
    """The certify phase for a given Q and prior (``certify`` and ``verify`` both run it)."""
    network, prior_means = hypothesis.network, hypothesis.prior.means
    network.check_buffers_unchanged()
    budget, grid = options.budget(), options.prior_scales
    delta_pb = budget.part("pac-bayes").per_choice
    family = FAMILIES[hypothesis.family]
    x_bound, y_bound = hypothesis.prior.bound_sample(inputs.x, inputs.y)
    n_bound = int(x_bound.shape[0])
    with timer.phase("kl"):
        j = int(kl_over_grid(family.kl_stats(network, prior_means), grid).argmin())
        sigma_p = grid.scales[j]
        kl = family.kl(network, prior_means, sigma_p)
    with timer.phase("monte_carlo"):
        rate, mc, mc_draws = monte_carlo_risk(
            network, x_bound, y_bound, budget, options, device, progress
        )
    certificate = pac_bayes_kl(mc.value, kl=kl, n=n_bound, delta=delta_pb)
    information = {
        "classic": pac_bayes_classic(mc.value, kl=kl, n=n_bound, delta=delta_pb),
        "quad": pac_bayes_quad(mc.value, kl=kl, n=n_bound, delta=delta_pb),
        "catoni_grid": pac_bayes_catoni_grid(mc.value, kl=kl, n=n_bound, delta=delta_pb),
    }
    with timer.phase("agreement"):
        agreement, checkpoint = checkpoint_statements(
            network,
            inputs.model,
            inputs.checkpoint_inputs,
            certificate,
            budget,
            x_bound,
            y_bound,
            options,
            device,
        )
    heldout_result = heldout_budget = None
    if inputs.heldout is not None:
        with timer.phase("heldout"):
            heldout_result, heldout_budget = heldout_statement(
                inputs.model, inputs.heldout, options, device
            )
    prior_info = {**hypothesis.prior.info, "scale": sigma_p, "scale_index": j}
    prior_info["grid"] = grid.to_dict()
    return GaussianCertificate(
        certificate=certificate,
        monte_carlo=mc,
        information=information,
        budget=budget,
        verdict=Verdict(certificate.value, inputs.num_outputs),
        kl_nats=kl,
        n_bound=n_bound,
        empirical_risk_estimate=rate,
        prior=prior_info,
        posterior=_posterior_info(hypothesis, network, inputs.model),
        heldout=heldout_result,
        heldout_budget=heldout_budget,
        agreement=agreement,
        checkpoint=checkpoint,
        timings=dict(timer.seconds),
        network=network,
        prior_means=prior_means,
        prior_scale=sigma_p,
        options=replace(options, mc_draws=mc_draws),  # as resolved, for the report
    )


#: The ``results.posterior`` fields that record how Q was chosen, in report order.
CHOICE_KEYS = (
    "sigma_isotropic_search",
    "training_objective_per_epoch",
    "training",
    "isotropic_search",
)


def _posterior_info(
    hypothesis: GaussianHypothesis, network: StochasticNetwork, model: nn.Module
) -> dict[str, Any]:
    """``results.posterior``: Q's family, size and σ summary, how each normalization layer
    of ``model`` was treated (when it has any), and the choice record."""
    sigmas = FAMILIES[hypothesis.family].sigmas(network)
    choice = hypothesis.choice
    info: dict[str, Any] = {"kind": hypothesis.family, "num_parameters": network.num_parameters()}
    if "sigma_isotropic_search" in choice:
        info["sigma_isotropic_search"] = choice["sigma_isotropic_search"]
    info["sigma_min"] = float(sigmas.min())
    info["sigma_median"] = float(sigmas.median())
    info["sigma_max"] = float(sigmas.max())
    info["sampler"] = network.sampler_summary()  # how the per-example draws were made
    normalization = normalization_treatment(model, PRIOR_SOURCES[hypothesis.prior.info["mean"]])
    if normalization:
        info["normalization"] = normalization
    info.update({k: choice[k] for k in CHOICE_KEYS[1:] if k in choice})
    return info


#: Where a BatchNorm's prior (a₀, c₀) comes from, by ``--prior``.
PRIOR_SOURCES = {
    "init": "prior from the init statistics",
    "zero": "prior mean zero",
    "data": "prior from statistics on S_prior only",
}


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
    """The whole Gaussian pipeline on the training sample (x, y) = S: choose, then certify.

    ``fixed_buffers``: the data-independent values of the model's buffers (default: those
    in ``init_state``); every buffer must equal them. ``checkpoint_inputs``: inputs never
    used for anything else on which Q's disagreement with the checkpoint is bounded, giving
    a certificate for the checkpoint itself (MATH.md §11).
    """
    dev = device or torch.device("cpu")
    timer = Timer()
    reference = init_state if fixed_buffers is None else fixed_buffers
    network, num_outputs = prepare_network(
        model, x, options=options, fixed_buffers=reference, device=dev
    )
    hypothesis = choose_hypothesis(
        model,
        network,
        x,
        y,
        options=options,
        init_state=init_state,
        device=dev,
        timer=timer,
        progress=progress,
    )
    inputs = CertifyInputs(model, x, y, num_outputs, heldout, checkpoint_inputs)
    return certify_hypothesis(
        hypothesis, inputs, options=options, device=dev, timer=timer, progress=progress
    )

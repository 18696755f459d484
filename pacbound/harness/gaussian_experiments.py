"""Coverage experiments of Gaussian (PAC-Bayes) certificates and of the Monte-Carlo bound
they rest on, each beside its planted-bug controls (:mod:`pacbound.harness.controls`)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pacbound.bounds import mc_upper_per_batch, mc_upper_per_example
from pacbound.certify.gaussian import GaussianCertificate, certify_gaussian
from pacbound.certify.gaussian_options import GaussianOptions
from pacbound.harness import controls
from pacbound.harness.coverage import CORRECT, RunRecord, derive_seed
from pacbound.harness.students import model_state, pretrained, student, train
from pacbound.harness.synthetic import TRUE_RISK_EXAMPLES, TeacherTask
from pacbound.posterior.fit import SIGMA_CANDIDATES
from pacbound.posterior.network import StochasticNetwork, build_stochastic_network
from pacbound.posterior.priors import (
    PriorMean,
    PriorTrainingRecipe,
    ScaleGrid,
    split_data,
    train_prior_mean,
)
from pacbound.posterior.risk import count_per_batch_errors, count_stochastic_errors
from pacbound.posterior.streams import DrawStream

#: The control of per-batch draws: K·n/B batch means counted as n·K independent draws.
PER_BATCH_AS_PER_EXAMPLE = "control:per-batch-counted-per-example"


@dataclass
class MonteCarloExperiment:
    """The Monte-Carlo Chernoff bound on its own: L(Q) ≤ kl⁻¹(ê, ln(1/δ)/n).

    Q = N(μ, σ² I) is fixed before any sample (μ pretrained on independent data), so each of
    n fresh examples with its own fresh weight draw is an independent Bernoulli(L(Q)) and the
    bound is on L(Q) itself. A large σ spreads L(h) over h ~ Q, which is what a shared-draw
    bug gets wrong.
    """

    task: TeacherTask
    n: int = 2000
    delta: float = 0.05
    sigma: float = 0.5
    hidden: int = 16
    truth_examples: int = TRUE_RISK_EXAMPLES
    seed: int = 0
    name: str = "monte-carlo"
    variants: tuple[str, ...] = (CORRECT, controls.MIDPOINT, controls.SHARED_DRAW)
    _posterior: StochasticNetwork | None = field(default=None, init=False, repr=False)
    _truth: float | None = field(default=None, init=False, repr=False)

    def posterior(self) -> StochasticNetwork:
        if self._posterior is None:
            mean = pretrained(self.task, self.hidden, 2000, self.seed)
            self._posterior = build_stochastic_network(mean, log_sigma_init=math.log(self.sigma))
        return self._posterior

    def truth(self) -> float:
        if self._truth is None:
            seed = derive_seed(self.name, self.seed, "truth")
            est = self.task.true_risk_stochastic(
                self.posterior(), examples=self.truth_examples, seed=seed
            )
            self._truth = est.value
        return self._truth

    def sample(self, r: int) -> tuple[Tensor, Tensor, torch.Generator, DrawStream]:
        """Run ``r``'s fresh examples, its weight-draw generator and the stream over it."""
        gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "data"))
        x, y = self.task.sample(self.n, gen)
        draws = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "draws"))
        return x, y, draws, DrawStream.from_generator(draws, "monte_carlo")

    def run(self, r: int) -> RunRecord:
        q = self.posterior()
        x, y, draws, stream = self.sample(r)
        rate = count_stochastic_errors(q, x, y, passes=1, stream=stream).rate
        shared = controls.count_shared_draw_errors(q, x, y, passes=1, generator=draws).rate
        bounds = {
            CORRECT: mc_upper_per_example(rate, n=self.n, passes=1, delta=self.delta).value,
            controls.MIDPOINT: controls.chernoff_bound(
                rate, draws=self.n, delta=self.delta, kl_inverse=controls.midpoint_kl_inverse
            ),
            controls.SHARED_DRAW: mc_upper_per_example(
                shared, n=self.n, passes=1, delta=self.delta
            ).value,
        }
        return RunRecord(self.truth(), bounds)


@dataclass
class MonteCarloPerBatchExperiment(MonteCarloExperiment):
    """:class:`MonteCarloExperiment` with per-batch draws (MATH.md §10): one θ ~ Q per batch
    of B = ``batch`` fresh examples, so the n/B batch error rates are the independent draws
    and the bound is kl⁻¹(ê, ln(1/δ)·B/n). The control counts them as n draws. Q's large σ
    spreads L(θ) over θ, so n/B = 10 batch means scatter far more than n examples with draws
    of their own would: the tight regime for that miscount."""

    batch: int = 200
    name: str = "monte-carlo-per-batch"
    variants: tuple[str, ...] = (CORRECT, PER_BATCH_AS_PER_EXAMPLE)

    def run(self, r: int) -> RunRecord:
        q = self.posterior()
        x, y, _, stream = self.sample(r)
        rate = count_per_batch_errors(q, x, y, passes=1, stream=stream, batch=self.batch).rate
        per_batch = mc_upper_per_batch(rate, n=self.n, passes=1, batch=self.batch, delta=self.delta)
        bounds = {
            CORRECT: per_batch.value,
            PER_BATCH_AS_PER_EXAMPLE: mc_upper_per_example(
                rate, n=self.n, passes=1, delta=self.delta
            ).value,
        }
        return RunRecord(self.truth(), bounds)


def _gaussian_controls(
    cert: GaussianCertificate, x: Tensor, y: Tensor, n_total: int, seed: int
) -> dict[str, float]:
    """Each control's bound for a Gaussian certificate on S_bound = (x, y)."""
    passes = cert.options.mc_passes
    d_pb = cert.budget.part("pac-bayes").per_choice
    d_mc = cert.budget.part("monte-carlo").delta
    kl, n_bound, mc_draws = cert.kl_nats, cert.n_bound, cert.monte_carlo.n
    draws = torch.Generator().manual_seed(seed)
    shared = controls.count_shared_draw_errors(cert.network, x, y, passes=passes, generator=draws)
    rate = cert.empirical_risk_estimate
    return {
        controls.N_FULL: controls.n_full_gaussian_bound(
            rate,
            passes=passes,
            kl=kl,
            n_total=n_total,
            delta_pac_bayes=d_pb,
            delta_monte_carlo=d_mc,
        ),
        controls.MIDPOINT: controls.gaussian_bound(
            rate,
            draws=mc_draws,
            kl=kl,
            n=n_bound,
            delta_pac_bayes=d_pb,
            delta_monte_carlo=d_mc,
            kl_inverse=controls.midpoint_kl_inverse,
        ),
        controls.SHARED_DRAW: controls.gaussian_bound(
            shared.rate,
            draws=mc_draws,
            kl=kl,
            n=n_bound,
            delta_pac_bayes=d_pb,
            delta_monte_carlo=d_mc,
        ),
    }


GAUSSIAN_VARIANTS = (CORRECT, *controls.CONTROLS)


@dataclass
class GaussianInitExperiment:
    """PAC-Bayes with the prior centred at a data-independent init (pretrained on its own
    sample, so it is informative), the posterior mean fine-tuned on S for ``steps`` steps
    (``steps=0``: posterior mean = prior mean, KL ≈ 0)."""

    task: TeacherTask
    n: int = 200
    delta: float = 0.2
    steps: int = 10
    lr: float = 0.003
    prior_scales: ScaleGrid = field(default_factory=lambda: ScaleGrid.log_spaced(1e-3, 1e-1, 9))
    mc_passes: int = 3
    hidden: int = 16
    truth_examples: int = TRUE_RISK_EXAMPLES
    seed: int = 0
    name: str = "gaussian-init"
    variants: tuple[str, ...] = (CORRECT, controls.MIDPOINT, controls.SHARED_DRAW)
    mc_draws: str = "per-example"
    batch_size: int = 1024
    _init: nn.Module | None = field(default=None, init=False, repr=False)

    def run(self, r: int) -> RunRecord:
        if self._init is None:
            self._init = pretrained(self.task, self.hidden, 2000, self.seed)
        gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "data"))
        x, y = self.task.sample(self.n, gen)
        model = train(copy.deepcopy(self._init), x, y, steps=self.steps, lr=self.lr)
        options = GaussianOptions(
            prior=PriorMean.INIT,
            prior_scales=self.prior_scales,
            mc_passes=self.mc_passes,
            delta=self.delta,
            seed=derive_seed(self.name, self.seed, r, "certify") % 2**31,
            search_examples=self.n,
            batch_size=self.batch_size,
            mc_draws=self.mc_draws,
        )
        cert = certify_gaussian(
            model, x, y, options=options,
            init_state=model_state(self._init),
        )  # fmt: skip
        truth = self.task.true_risk_stochastic(
            cert.network,
            examples=self.truth_examples,
            seed=derive_seed(self.name, self.seed, r, "truth"),
        )
        bounds = {CORRECT: cert.value}
        bounds.update(_gaussian_controls(cert, x, y, self.n, derive_seed(self.name, r, "shared")))
        del bounds[controls.N_FULL]  # no prior split: n = |S| is the correct count here
        if cert.options.mc_draws == "per-batch":  # the same draws counted as n·K draws
            bounds[PER_BATCH_AS_PER_EXAMPLE] = controls.gaussian_bound(
                cert.empirical_risk_estimate,
                draws=cert.n_bound * cert.options.mc_passes,
                kl=cert.kl_nats,
                n=cert.n_bound,
                delta_pac_bayes=cert.budget.part("pac-bayes").per_choice,
                delta_monte_carlo=cert.budget.part("monte-carlo").delta,
            )
        return RunRecord(truth.value, bounds)


@dataclass
class GaussianPerBatchExperiment(GaussianInitExperiment):
    """:class:`GaussianInitExperiment` with per-batch Monte-Carlo draws (``--mc-draws
    per-batch``, MATH.md §10): one θ ~ Q per batch of B = ``batch_size`` examples, the
    Chernoff bound on the K·n/B batch means; beside the control that counts them as n·K."""

    name: str = "gaussian-per-batch"
    variants: tuple[str, ...] = (CORRECT, PER_BATCH_AS_PER_EXAMPLE)
    mc_draws: str = "per-batch"
    batch_size: int = 50


#: A one-value prior-scale grid equal to the smallest isotropic σ_q candidate: with the
#: posterior mean equal to the prior mean, the σ_q search then lands on KL = 0 exactly.
POINT_GRID = ScaleGrid((SIGMA_CANDIDATES[0],))


@dataclass
class GaussianDataExperiment:
    """PAC-Bayes with a data-dependent prior: the prior mean trained on S_prior (a seeded
    split), the posterior mean *equal* to it (KL = 0), the bound on the small S_bound.

    The tight regime for the n-counting bug: |S_bound| ≪ |S|.
    """

    task: TeacherTask
    n: int = 2000
    prior_fraction: float = 0.975
    delta: float = 0.01
    mc_passes: int = 5
    hidden: int = 16
    recipe: PriorTrainingRecipe = field(
        default_factory=lambda: PriorTrainingRecipe(
            epochs=5, lr=0.05, batch_size=100, lr_schedule="constant"
        )
    )
    prior_scales: ScaleGrid = POINT_GRID
    truth_examples: int = TRUE_RISK_EXAMPLES
    seed: int = 0
    name: str = "gaussian-data"
    variants: tuple[str, ...] = GAUSSIAN_VARIANTS

    def options(self, r: int) -> GaussianOptions:
        return GaussianOptions(
            prior=PriorMean.DATA,
            prior_scales=self.prior_scales,
            prior_fraction=self.prior_fraction,
            prior_recipe=self.recipe,
            mc_passes=self.mc_passes,
            delta=self.delta,
            seed=derive_seed(self.name, self.seed, r, "certify") % 2**31,
            batch_size=1024,
        )

    def run(self, r: int) -> RunRecord:
        gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "data"))
        x, y = self.task.sample(self.n, gen)
        options = self.options(r)
        init = student(self.task, self.hidden, derive_seed(self.name, self.seed, r, "init"))
        init_state = model_state(init)
        # The posterior mean: the same training on S_prior that the pipeline does for the prior.
        split = split_data(self.n, prior_fraction=self.prior_fraction, seed=options.seed)
        model = train_prior_mean(
            init, x[split.prior_indices], y[split.prior_indices], self.recipe,
            device=torch.device("cpu"),
        )  # fmt: skip
        cert = certify_gaussian(model, x, y, options=options, init_state=init_state)
        truth = self.task.true_risk_stochastic(
            cert.network,
            examples=self.truth_examples,
            seed=derive_seed(self.name, self.seed, r, "truth"),
        )
        xb, yb = x[split.bound_indices], y[split.bound_indices]
        bounds = {CORRECT: cert.value}
        bounds.update(_gaussian_controls(cert, xb, yb, self.n, derive_seed(self.name, r, "shared")))
        return RunRecord(truth.value, bounds)

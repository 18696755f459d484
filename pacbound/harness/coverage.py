"""Coverage experiments: does a certificate fall below the true risk more often than δ?

For r = 1..R the runner draws a fresh training sample (and held-out sample) from a
:class:`~pacbound.harness.synthetic.TeacherTask`, trains a small model, certifies it with one
method, and measures the true risk of *the certified classifier* (the stochastic posterior Q
for Gaussian certificates, the checkpoint for the held-out bound) on ≥ 10⁶ fresh examples.
Every pipeline variant (the correct one and the planted-bug controls of
:mod:`pacbound.harness.controls`) is scored on the same runs.

Test. A run *violates* when bound < true risk. A sound certificate violates with probability
at most δ (its total failure probability), so the number of violations V in R independent
runs is stochastically dominated by Bin(R, δ). The one-sided exact binomial test rejects
soundness when p = P[Bin(R, δ) ≥ V] < α (default α = 0.001).
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from scipy.stats import binom
from torch import Tensor, nn

from pacbound.bounds import mc_upper_per_example, test_set_bound
from pacbound.certify.gaussian import GaussianCertificate, certify_gaussian
from pacbound.certify.gaussian_options import GaussianOptions
from pacbound.harness import controls
from pacbound.harness.synthetic import TRUE_RISK_EXAMPLES, TeacherTask
from pacbound.posterior.fit import SIGMA_CANDIDATES
from pacbound.posterior.network import StochasticNetwork, build_stochastic_network
from pacbound.posterior.priors import PriorMean, PriorTrainingRecipe, ScaleGrid, split_data
from pacbound.posterior.risk import count_errors, count_stochastic_errors

#: Significance level of the coverage test: a sound pipeline fails it with probability ≤ α.
DEFAULT_ALPHA = 0.001
CORRECT = "correct"


def derive_seed(*labels: int | str) -> int:
    """A 63-bit seed from labels (SHA-256): independent streams per method, run and purpose."""
    digest = hashlib.sha256("/".join(str(v) for v in labels).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def binomial_p_value(violations: int, runs: int, delta: float) -> float:
    """P[Bin(R, δ) ≥ V]: the one-sided exact binomial test of "violation rate ≤ δ".

    >>> round(binomial_p_value(0, 100, 0.2), 12)
    1.0
    >>> binomial_p_value(60, 100, 0.2) < 1e-15
    True
    """
    return float(binom.sf(violations - 1, runs, delta))


@dataclass(frozen=True)
class RunRecord:
    """One run: the true risk of the certified classifier and each variant's bound."""

    truth: float
    bounds: dict[str, float]


@dataclass(frozen=True)
class CoverageResult:
    """Violations of one pipeline variant over R runs and the binomial test's verdict."""

    method: str
    variant: str
    runs: int
    delta: float
    violations: int
    p_value: float
    alpha: float
    max_ratio: float  # max over runs of true risk / bound
    mean_bound: float
    mean_truth: float
    seconds: float

    @property
    def sound(self) -> bool:
        """The test does not reject "violation rate ≤ δ" at level α."""
        return self.p_value >= self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "sound": self.sound}


class CoverageMethod(Protocol):
    """A certification pipeline on a synthetic task, with its planted-bug variants."""

    name: str
    delta: float
    variants: tuple[str, ...]

    def run(self, r: int) -> RunRecord: ...


def run_coverage(
    method: CoverageMethod, runs: int, *, alpha: float = DEFAULT_ALPHA
) -> dict[str, CoverageResult]:
    """R independent runs of ``method``; one :class:`CoverageResult` per variant."""
    start = time.perf_counter()
    records = [method.run(r) for r in range(runs)]
    seconds = time.perf_counter() - start
    out = {}
    for variant in method.variants:
        pairs = [(rec.truth, rec.bounds[variant]) for rec in records]
        violations = sum(bound < truth for truth, bound in pairs)
        out[variant] = CoverageResult(
            method=method.name,
            variant=variant,
            runs=runs,
            delta=method.delta,
            violations=violations,
            p_value=binomial_p_value(violations, runs, method.delta),
            alpha=alpha,
            max_ratio=max(truth / bound for truth, bound in pairs),
            mean_bound=sum(b for _, b in pairs) / runs,
            mean_truth=sum(t for t, _ in pairs) / runs,
            seconds=seconds,
        )
    return out


# ---------------------------------------------------------------------------------------------
# Small models


def student(task: TeacherTask, hidden: int, seed: int) -> nn.Sequential:
    """A fresh, seeded ``d → hidden → K`` ReLU MLP (no global RNG touched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(task.dim, hidden), nn.ReLU(), nn.Linear(hidden, task.num_classes)
        )


def train(model: nn.Module, x: Tensor, y: Tensor, *, steps: int, lr: float) -> nn.Module:
    """Full-batch Adam on the cross-entropy, in place (deterministic on CPU)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Methods


@dataclass
class HeldOutMethod:
    """Train on S (n examples), bound the checkpoint on a fresh held-out set of m examples."""

    task: TeacherTask
    n: int = 200
    m: int = 200
    delta: float = 0.2
    hidden: int = 16
    steps: int = 100
    lr: float = 0.03
    truth_examples: int = TRUE_RISK_EXAMPLES
    seed: int = 0
    name: str = "heldout"
    variants: tuple[str, ...] = (CORRECT,)

    def run(self, r: int) -> RunRecord:
        gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "data"))
        x, y = self.task.sample(self.n, gen)
        hx, hy = self.task.sample(self.m, gen)
        model = train(
            student(self.task, self.hidden, derive_seed(self.name, self.seed, r, "init")),
            x,
            y,
            steps=self.steps,
            lr=self.lr,
        )
        bound = test_set_bound(count_errors(model, hx, hy).rate, n=self.m, delta=self.delta)
        truth = self.task.true_risk(
            model, examples=self.truth_examples, seed=derive_seed(self.name, self.seed, r, "truth")
        )
        return RunRecord(truth.value, {CORRECT: bound.value})


def _pretrained(task: TeacherTask, hidden: int, n: int, seed: int) -> nn.Module:
    """A model trained on its own fresh sample: a prior mean fixed independently of S."""
    gen = torch.Generator().manual_seed(derive_seed("pretrain", seed))
    x, y = task.sample(n, gen)
    return train(
        student(task, hidden, derive_seed("pretrain-init", seed)), x, y, steps=200, lr=0.03
    )


@dataclass
class MonteCarloMethod:
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
            mean = _pretrained(self.task, self.hidden, 2000, self.seed)
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

    def run(self, r: int) -> RunRecord:
        q = self.posterior()
        gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "data"))
        x, y = self.task.sample(self.n, gen)
        draws = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "draws"))
        rate = count_stochastic_errors(q, x, y, passes=1, generator=draws).rate
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
class GaussianInitMethod:
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
    _init: nn.Module | None = field(default=None, init=False, repr=False)

    def run(self, r: int) -> RunRecord:
        if self._init is None:
            self._init = _pretrained(self.task, self.hidden, 2000, self.seed)
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
            batch_size=1024,
        )
        cert = certify_gaussian(
            model, x, y, options=options,
            init_state=_state(self._init),
        )  # fmt: skip
        truth = self.task.true_risk_stochastic(
            cert.network,
            examples=self.truth_examples,
            seed=derive_seed(self.name, self.seed, r, "truth"),
        )
        bounds = {CORRECT: cert.value}
        bounds.update(_gaussian_controls(cert, x, y, self.n, derive_seed(self.name, r, "shared")))
        del bounds[controls.N_FULL]  # no prior split: n = |S| is the correct count here
        return RunRecord(truth.value, bounds)


#: A one-value prior-scale grid equal to the smallest isotropic σ_q candidate: with the
#: posterior mean equal to the prior mean, the σ_q search then lands on KL = 0 exactly.
POINT_GRID = ScaleGrid((SIGMA_CANDIDATES[0],))


@dataclass
class GaussianDataMethod:
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
        from pacbound.posterior.priors import train_prior_mean

        gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "data"))
        x, y = self.task.sample(self.n, gen)
        options = self.options(r)
        init = student(self.task, self.hidden, derive_seed(self.name, self.seed, r, "init"))
        init_state = _state(init)
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


@dataclass
class CompressionMethod:
    """Occam bound on a decoded compressed model: train on S, compress (``quantize``: every
    weight quantized directly; ``subspace``: the least-squares projection of θ − θ₀ onto a
    seeded d-dimensional subspace, quantized), decode, L ≤ occam_binomial(L̂ on S, K bits).
    The certified classifier is the decoded model; its true risk is measured."""

    task: TeacherTask
    kind: str = "quantize"
    n: int = 2000
    delta: float = 0.2
    levels: int = 4
    d: int = 16
    hidden: int = 16
    steps: int = 100
    lr: float = 0.03
    truth_examples: int = TRUE_RISK_EXAMPLES
    seed: int = 0
    variants: tuple[str, ...] = (CORRECT,)
    name: str = "quantize"

    def __post_init__(self) -> None:
        self.name = self.kind

    def run(self, r: int) -> RunRecord:
        from pacbound.bounds import bits_to_nats, occam_binomial
        from pacbound.compressors.base import Compressor
        from pacbound.compressors.quantized import (
            DirectQuantizeCompressor,
            SubspaceQuantizeCompressor,
        )

        gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "data"))
        x, y = self.task.sample(self.n, gen)

        def factory(seed: int) -> nn.Module:
            return student(self.task, self.hidden, derive_seed(self.name, self.seed, seed))

        compressor: Compressor
        if self.kind == "subspace":
            compressor = SubspaceQuantizeCompressor(factory, d=self.d, levels=self.levels, seed=r)
        else:
            compressor = DirectQuantizeCompressor(factory, levels=self.levels, seed=r)
        model = train(compressor.build(), x, y, steps=self.steps, lr=self.lr)
        message = compressor.compress(model)
        decoded = compressor.decompress(message.to_bytes())
        rate = count_errors(decoded, x, y).rate
        bound = occam_binomial(
            rate, kl=bits_to_nats(message.code_length_bits), n=self.n, delta=self.delta
        )
        truth = self.task.true_risk(
            decoded,
            examples=self.truth_examples,
            seed=derive_seed(self.name, self.seed, r, "truth"),
        )
        return RunRecord(truth.value, {CORRECT: bound.value})


COMPRESSION_METHODS = ("quantize", "subspace")


def make_method(name: str, task: TeacherTask, **kwargs: Any) -> CoverageMethod:
    """The coverage method called ``name`` with its tight-regime defaults."""
    factories: dict[str, Any] = {
        "heldout": HeldOutMethod,
        "monte-carlo": MonteCarloMethod,
        "gaussian-init": GaussianInitMethod,
        "gaussian-data": GaussianDataMethod,
    }
    if name in COMPRESSION_METHODS:
        return CompressionMethod(task, kind=name, **kwargs)
    if name == "sequence-linear":
        from pacbound.harness.planted import SequenceMonteCarloMethod

        return SequenceMonteCarloMethod(task, **kwargs)
    if name not in factories:
        valid = ", ".join([*factories, *COMPRESSION_METHODS, "sequence-linear"])
        raise ValueError(f"unknown coverage method {name!r}; valid: {valid}")
    method: CoverageMethod = factories[name](task, **kwargs)
    return method

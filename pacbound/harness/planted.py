"""Planted models: the ways a user's own architecture broke certificates before issue #11.

Each model below got a certificate far below its true risk from an earlier pacbound. The
harness shows that each is now **refused** or **certified soundly**:

* :class:`TiedStudent` — one weight under two names (``out.weight = dummy.weight``): one copy
  got a Gaussian outside the KL. Now refused by the Gaussian method (exit 3); a compression
  certificate codes the tied weight once and stays sound.
* :class:`MemorizingStudent` — an int64 buffer that stores the training labels, looked up by
  an exact match of the input: zero training error on random labels (true risk 1 − 1/K).
  Refused by the Gaussian method (buffers must equal their data-independent value); the
  compression methods code the table exactly and pay for every entry (issue #13).
* :class:`SequenceStudent` — an ``nn.Linear`` applied to a (B, T, F) sequence. Local
  reparameterization drew its noise per position, not per example, so the Monte-Carlo
  estimate of L̂(Q) was optimistic. Now one weight matrix is drawn per example; the coverage
  experiment :class:`SequenceMonteCarloExperiment` checks it against whole-network draws, beside the
  old behaviour as a planted control (:data:`controls.PER_POSITION`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.bounds import mc_upper_per_example
from pacbound.certify.gaussian import certify_gaussian
from pacbound.certify.gaussian_options import GaussianOptions
from pacbound.certify.occam_options import CompressionMethod, CompressionOptions
from pacbound.certify.quantize import certify_quantized
from pacbound.errors import InvalidInputError
from pacbound.harness import controls
from pacbound.harness.coverage import CORRECT, RunRecord, derive_seed
from pacbound.harness.students import model_state, train
from pacbound.harness.synthetic import TRUE_RISK_EXAMPLES, TeacherTask
from pacbound.posterior.network import StochasticNetwork, build_stochastic_network
from pacbound.posterior.priors import PriorMean, ScaleGrid
from pacbound.posterior.risk import count_stochastic_errors
from pacbound.posterior.streams import DrawStream


class TiedStudent(nn.Module):
    """``d → hidden → K`` with the output weight tied to an unused ``dummy`` layer."""

    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.dummy = nn.Linear(hidden, classes)
        self.out = nn.Linear(hidden, classes)
        self.out.weight = self.dummy.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(x)))


class MemorizingStudent(nn.Module):
    """A linear model plus an integer lookup table of training inputs and their labels."""

    keys: Tensor
    labels: Tensor

    def __init__(self, dim: int, classes: int, capacity: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, classes)
        self.classes = classes
        self.register_buffer("keys", torch.full((capacity,), -1, dtype=torch.int64))
        self.register_buffer("labels", torch.zeros(capacity, dtype=torch.int64))

    @staticmethod
    def key(x: Tensor) -> Tensor:
        return (x * 1e4).round().to(torch.int64).sum(dim=1)

    def memorize(self, x: Tensor, y: Tensor) -> None:
        with torch.no_grad():
            self.keys[: x.shape[0]] = self.key(x)
            self.labels[: x.shape[0]] = y

    def forward(self, x: Tensor) -> Tensor:
        hit = self.key(x)[:, None] == self.keys[None, :]
        found = hit.any(dim=1)
        label = self.labels[hit.float().argmax(dim=1)]
        boost = nn.functional.one_hot(label, self.classes).float() * 100.0
        return self.linear(x) + boost * found[:, None].float()


class SequenceStudent(nn.Module):
    """A token ``Linear`` on a (B, T, d) sequence, mean-pooled, then a head. The sequence is
    T copies of x: the simplest one whose positions share information, where drawing the
    token layer's noise per position (instead of per example) averages it away."""

    def __init__(self, dim: int, hidden: int, classes: int, positions: int = 16) -> None:
        super().__init__()
        self.positions = positions
        self.token = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x[:, None, :].expand(x.shape[0], self.positions, x.shape[1])
        return self.head(torch.relu(self.token(tokens)).mean(dim=1))


def _seeded(build: Any, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module: nn.Module = build()
    return module


def planted_refusals(task: TeacherTask, *, n: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Certify each refused planted model on random labels (true risk 1 − 1/K) with the
    Gaussian method and (for the memorizing model) the quantize method; record the outcome."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, task.dim, generator=gen)
    y = torch.randint(0, task.num_classes, (n,), generator=gen)  # random labels
    tied = _seeded(lambda: TiedStudent(task.dim, 8, task.num_classes), seed)

    def memo_factory(s: int) -> nn.Module:
        return _seeded(lambda: MemorizingStudent(task.dim, task.num_classes, n), s)

    memo_init = memo_factory(seed)
    memo = MemorizingStudent(task.dim, task.num_classes, n)
    memo.load_state_dict(memo_init.state_dict())
    memo.memorize(x, y)
    options = GaussianOptions(
        prior=PriorMean.INIT, prior_scales=ScaleGrid.log_spaced(1e-3, 1.0, 7), mc_passes=1
    )
    quantize = CompressionOptions(method=CompressionMethod.QUANTIZE)
    cases: list[tuple[str, str, Callable[[], Any]]] = [
        ("tied weight", "gaussian", lambda: certify_gaussian(
            tied, x, y, options=options, init_state=model_state(tied))),
        ("integer buffer memorising the labels", "gaussian", lambda: certify_gaussian(
            memo, x, y, options=options, init_state=model_state(memo_init))),
        ("integer buffer memorising the labels", "quantize", lambda: certify_quantized(
            memo, memo_factory, x, y, num_classes=task.num_classes, options=quantize)),
    ]  # fmt: skip
    out = []
    for model, method, run in cases:
        try:
            value = run().value
        except InvalidInputError as exc:
            out.append({"model": model, "method": method, "refused": True, "message": str(exc)})
        else:
            out.append({"model": model, "method": method, "refused": False, "bound": value})
    return out


@dataclass
class SequenceMonteCarloExperiment:
    """The Monte-Carlo bound L̂(Q) ≤ kl⁻¹(ê, ln(1/δ)/n) for a :class:`SequenceStudent`
    posterior Q = N(μ, σ² I) fixed before any sample (μ pretrained on independent data).

    The true risk L(Q) is measured with **whole-network draws** (a deterministic copy of the
    network at each draw, one per batch of fresh examples), so it does not rely on the layer
    sampler under test. ``controls.PER_POSITION`` is the earlier sampler: independent noise
    for every position of a sequence, i.e. local reparameterization on (B, T, F) input.
    """

    task: TeacherTask
    n: int = 2000
    delta: float = 0.01
    sigma: float = 0.3
    hidden: int = 16
    truth_examples: int = TRUE_RISK_EXAMPLES
    truth_batch: int = 250
    seed: int = 0
    name: str = "sequence-linear"
    variants: tuple[str, ...] = (CORRECT, controls.PER_POSITION)
    _posterior: StochasticNetwork | None = field(default=None, init=False, repr=False)
    _truth: float | None = field(default=None, init=False, repr=False)

    def posterior(self) -> StochasticNetwork:
        if self._posterior is None:
            gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, "pretrain"))
            x, y = self.task.sample(2000, gen)
            init = derive_seed(self.name, self.seed, "init") % 2**31
            classes = self.task.num_classes
            mean = _seeded(lambda: SequenceStudent(self.task.dim, self.hidden, classes), init)
            train(mean, x, y, steps=300, lr=0.03)
            self._posterior = build_stochastic_network(mean, log_sigma_init=math.log(self.sigma))
        return self._posterior

    @torch.no_grad()
    def truth(self) -> float:
        if self._truth is None:
            gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, "truth"))
            draws = torch.Generator().manual_seed(derive_seed(self.name, self.seed, "draws"))
            disagree = 0
            for start in range(0, self.truth_examples, self.truth_batch):
                m = min(self.truth_batch, self.truth_examples - start)
                x = torch.randn(m, self.task.dim, generator=gen)
                h = controls.sample_network(self.posterior(), draws)
                disagree += int((h(x).argmax(dim=1) != self.task.clean_labels(x)).sum())
            self._truth = self.task.risk_from_disagreement(disagree / self.truth_examples)
        return self._truth

    def run(self, r: int) -> RunRecord:
        q = self.posterior()
        gen = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "data"))
        x, y = self.task.sample(self.n, gen)
        draws = torch.Generator().manual_seed(derive_seed(self.name, self.seed, r, "mc"))
        stream = DrawStream.from_generator(draws, "monte_carlo")
        rate = count_stochastic_errors(q, x, y, passes=1, stream=stream).rate
        old = controls.count_per_position_errors(q, x, y, generator=draws).rate
        bounds = {
            CORRECT: mc_upper_per_example(rate, n=self.n, passes=1, delta=self.delta).value,
            controls.PER_POSITION: mc_upper_per_example(
                old, n=self.n, passes=1, delta=self.delta
            ).value,
        }
        return RunRecord(self.truth(), bounds)

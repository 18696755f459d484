"""A synthetic task whose true risk is known to any precision: a fixed random teacher network.

Inputs x ~ N(0, I_d); the clean label is the argmax of a fixed random MLP ``teacher`` (drawn
once from ``seed``); the observed label is flipped to a uniformly chosen *other* class with
probability η. Fresh samples are free, so the true risk of any classifier is measured on
≥ 10⁶ fresh examples (MATH.md §9).

True risk without label-noise variance. Given x, a prediction ŷ errs with probability η if
ŷ = t(x) and 1 − η/(K − 1) otherwise, so

    L(h) = η + (1 − ηK/(K − 1)) · P_x[h(x) ≠ t(x)],

and the estimator averages this conditional expectation over fresh x (unbiased, and its
variance comes from x and the classifier's own randomness only). For a stochastic network
the weights are drawn afresh for every example (per-example draws), which is exactly the
Gibbs classifier Q whose risk L(Q) a PAC-Bayes certificate bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pacbound.posterior.network import StochasticNetwork

#: Fresh examples used by default to measure a true risk (standard error ≤ 5e-4).
TRUE_RISK_EXAMPLES = 1_000_000
#: Examples per streamed batch when measuring a true risk.
TRUE_RISK_BATCH = 65_536


@dataclass(frozen=True)
class RiskEstimate:
    """A true risk measured on ``examples`` fresh draws; ``standard_error`` of the estimate."""

    value: float
    disagreement: float
    examples: int

    @property
    def standard_error(self) -> float:
        return math.sqrt(max(self.value * (1.0 - self.value), 1e-12) / self.examples)


def _teacher(dim: int, hidden: int, num_classes: int, seed: int) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            assert isinstance(layer, nn.Linear)
            fan_in = layer.weight.shape[1]
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 2 / fan_in**0.5)
            layer.bias.zero_()
    return net.eval()


@dataclass(frozen=True)
class TeacherTask:
    """A seeded random-teacher classification task with symmetric label noise η."""

    dim: int = 5
    hidden: int = 32
    num_classes: int = 2
    noise: float = 0.1
    seed: int = 0
    teacher: nn.Sequential = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise < 1.0 - 1.0 / self.num_classes:
            raise ValueError(f"label noise must lie in [0, 1 − 1/K), got {self.noise!r}")
        teacher = _teacher(self.dim, self.hidden, self.num_classes, self.seed)
        object.__setattr__(self, "teacher", teacher)

    @torch.no_grad()
    def clean_labels(self, x: Tensor) -> Tensor:
        return self.teacher(x).argmax(dim=1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n fresh i.i.d. examples (x float32 (n, d), y int64 (n,)) drawn with ``generator``."""
        x = torch.randn(n, self.dim, generator=generator)
        y = self.clean_labels(x)
        flip = torch.rand(n, generator=generator) < self.noise
        shift = torch.randint(1, self.num_classes, (n,), generator=generator)
        return x, torch.where(flip, (y + shift) % self.num_classes, y)

    def risk_from_disagreement(self, disagreement: float) -> float:
        """L = η + (1 − ηK/(K−1)) · P[ŷ ≠ t(x)] (exact given the disagreement rate)."""
        k = self.num_classes
        return self.noise + (1.0 - self.noise * k / (k - 1)) * disagreement

    @torch.no_grad()
    def _measure(
        self, predict: Callable[[Tensor], Tensor], examples: int, seed: int, batch_size: int
    ) -> RiskEstimate:
        gen = torch.Generator().manual_seed(seed)
        disagree = 0
        for start in range(0, examples, batch_size):
            x = torch.randn(min(batch_size, examples - start), self.dim, generator=gen)
            disagree += int((predict(x).argmax(dim=1) != self.clean_labels(x)).sum())
        d = disagree / examples
        return RiskEstimate(self.risk_from_disagreement(d), d, examples)

    def true_risk(
        self,
        classifier: nn.Module,
        *,
        examples: int = TRUE_RISK_EXAMPLES,
        seed: int = 0,
        batch_size: int = TRUE_RISK_BATCH,
    ) -> RiskEstimate:
        """True risk of a deterministic classifier (eval mode) on ``examples`` fresh inputs."""
        classifier.eval()
        return self._measure(classifier, examples, seed, batch_size)

    def true_risk_stochastic(
        self,
        network: StochasticNetwork,
        *,
        examples: int = TRUE_RISK_EXAMPLES,
        seed: int = 0,
        batch_size: int = TRUE_RISK_BATCH,
    ) -> RiskEstimate:
        """True risk L(Q) of the Gibbs classifier: fresh weights for every fresh example."""
        gen = torch.Generator().manual_seed(seed + 1)
        network.set_mode("per_example", gen)
        network.eval()
        return self._measure(network, examples, seed, batch_size)

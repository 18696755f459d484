"""The posterior-family interface: what a Gaussian posterior family Q provides.

A family says how Q is **fitted** around the checkpoint (:meth:`PosteriorFamily.fit`, the
choice phase: it may use all of S), what its **KL** against the prior N(μ_p, σ_p² I) is
(sufficient statistics over the σ_p grid for choosing σ_p, and the certified KL), and how it
is **saved and loaded** (the tensors of the posterior file; the file records the family's
name). The registry is :data:`pacbound.posterior.families.FAMILIES`; the CLI's
``--posterior`` choices are its keys.

**Sampling contract.** The layer samplers (:mod:`pacbound.posterior.layers`, the functional
sampler) draw per example ``w = μ + σ ⊙ ε`` with ``σ = exp(log σ)`` read from each slot of
:attr:`StochasticNetwork.slots` (``slot.mu``, ``slot.log_sigma``, same shape): every family
here is *elementwise* (a diagonal covariance), so a family only sets those tensors. A
non-elementwise family (low-rank, Kronecker-factored) would need its own draw — a per-slot
``sample(ε)`` handed to the samplers instead of the elementwise σ — its own closed-form KL
(log-determinant and trace terms instead of the sufficient statistics below), and extra
tensors in its saved state (e.g. ``factor``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from pacbound.posterior.fit import TrainingRecipe, kl_sufficient_stats
from pacbound.posterior.kl import gaussian_kl
from pacbound.posterior.network import StochasticNetwork
from pacbound.posterior.priors import ScaleGrid
from pacbound.posterior.streams import DrawStream

#: ``factory(description, total)`` returns a hook called with the number of items done.
Progress = Callable[[str, int], Callable[[int], None]]

#: A family's saved state: tensor kind ("mu", "log_sigma", …) → parameter name → tensor.
State = dict[str, dict[str, Tensor]]


@dataclass(frozen=True)
class FitData:
    """What fitting Q may use (chosen by the certify pipeline, which pays for it).

    ``x_search``/``y_search``: a seeded subset of S_bound for estimated bounds (search,
    epoch selection); ``x_train``/``y_train``: all of S, for training. ``delta_pac_bayes``
    is the PAC-Bayes part of δ over the whole grid, ``delta_per_choice`` its share per
    grid value. The streams are the run's search and selection draw streams
    (:class:`~pacbound.posterior.streams.DrawStream`)."""

    x_search: Tensor
    y_search: Tensor
    x_train: Tensor
    y_train: Tensor
    n_bound: int
    grid: ScaleGrid
    delta_pac_bayes: float
    delta_per_choice: float
    batch_size: int
    training: TrainingRecipe
    search_stream: DrawStream
    selection_stream: DrawStream
    device: torch.device
    progress: Progress


class PosteriorFamily(Protocol):
    """A posterior family (one module each; registered in ``posterior.families``).

    The parameters it trains are the slots' tensors: μ and log σ for the elementwise
    families (``network.mean_parameters()``, ``network.log_sigma_parameters()``, moved by
    :func:`~pacbound.posterior.fit.train_diagonal_posterior`); a family with other tensors
    keeps them on its slots and trains them in its :meth:`fit`."""

    name: str
    description: str  # one line, for --help and docs
    trained: bool  # whether fitting uses the training recipe (the --posterior-* options)

    def fit(
        self, network: StochasticNetwork, prior_means: list[Tensor], data: FitData
    ) -> Mapping[str, Any]:
        """Fit Q in place around the network's current means (the checkpoint); return the
        record of the choice (``results.posterior`` fields that ``verify`` does not redo)."""
        ...

    def kl_stats(
        self, network: StochasticNetwork, prior_means: list[Tensor]
    ) -> tuple[float, float, int]:
        """Sufficient statistics of KL(Q‖N(μ_p, σ_p² I)) over σ_p (for choosing σ_p)."""
        ...

    def kl(self, network: StochasticNetwork, prior_means: list[Tensor], sigma_p: float) -> float:
        """The certified KL(Q‖P) in nats (an upper bound of the exact value)."""
        ...

    def sigmas(self, network: StochasticNetwork) -> Tensor:
        """Every posterior standard deviation, flattened (for the report's summary)."""
        ...

    def state(self, network: StochasticNetwork) -> State:
        """The tensors that define Q exactly (saved in the posterior file)."""
        ...

    def load(self, network: StochasticNetwork, state: State) -> None:
        """Set the network's Q from a saved :meth:`state` (bit for bit)."""
        ...


class ElementwiseGaussian:
    """Q = N(μ, diag σ²) with one σ per weight (``slot.log_sigma`` has ``slot.mu``'s shape).

    KL, save and load are shared by every elementwise family; a subclass says how to fit.
    The state stores log σ, the parameter itself, so a loaded Q draws the very same σ.
    """

    name = ""
    description = ""
    trained = False

    def kl_stats(
        self, network: StochasticNetwork, prior_means: list[Tensor]
    ) -> tuple[float, float, int]:
        return kl_sufficient_stats(network, prior_means)

    def kl(self, network: StochasticNetwork, prior_means: list[Tensor], sigma_p: float) -> float:
        return gaussian_kl(
            (s.mu, torch.exp(s.log_sigma), m.to(s.mu.device), sigma_p)
            for s, m in zip(network.slots, prior_means, strict=True)
        )

    def sigmas(self, network: StochasticNetwork) -> Tensor:
        return torch.cat([torch.exp(s.log_sigma.detach()).flatten() for s in network.slots])

    def state(self, network: StochasticNetwork) -> State:
        return {
            "mu": {s.name: s.mu.detach().cpu().contiguous() for s in network.slots},
            "log_sigma": {s.name: s.log_sigma.detach().cpu().contiguous() for s in network.slots},
        }

    def load(self, network: StochasticNetwork, state: State) -> None:
        with torch.no_grad():
            for slot in network.slots:
                slot.mu.copy_(state["mu"][slot.name])
                slot.log_sigma.copy_(state["log_sigma"][slot.name])

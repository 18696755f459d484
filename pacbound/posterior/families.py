"""The registry of posterior families: name → :class:`~pacbound.posterior.family.PosteriorFamily`.

The CLI's ``--posterior`` choices are ``tuple(FAMILIES)``. Adding a family is one module
(a class implementing :class:`~pacbound.posterior.family.PosteriorFamily`, e.g. a subclass of
:class:`~pacbound.posterior.family.ElementwiseGaussian` with its own ``fit``) plus one line
in :data:`FAMILIES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from pacbound.errors import InvalidInputError
from pacbound.posterior.family import ElementwiseGaussian, FitData, PosteriorFamily
from pacbound.posterior.fit import (
    IsotropicSearch,
    estimate_bound,
    search_isotropic_sigma,
    train_diagonal_posterior,
)
from pacbound.posterior.network import StochasticNetwork


def _search(
    network: StochasticNetwork, prior_means: list[Tensor], data: FitData
) -> IsotropicSearch:
    hook = data.progress("searching isotropic sigma", 41 * int(data.x_search.shape[0]))
    return search_isotropic_sigma(
        network,
        prior_means,
        data.grid,
        data.x_search,
        data.y_search,
        n_bound=data.n_bound,
        delta_pac_bayes=data.delta_pac_bayes,
        stream=data.search_stream,
        batch_size=data.batch_size,
        device=data.device,
        progress=hook,
    )


def _search_record(search: IsotropicSearch) -> dict[str, Any]:
    return {
        "sigma_isotropic_search": search.sigma_q,
        "isotropic_search": [
            {"sigma": sq, "estimated_risk": risk, "estimated_bound": est}
            for sq, risk, est in search.candidates
        ],
    }


class Isotropic(ElementwiseGaussian):
    """One σ for every weight, chosen by a search over σ_q around the checkpoint."""

    name = "isotropic"
    description = "one σ by search around the checkpoint (fast)"
    trained = False

    def fit(
        self, network: StochasticNetwork, prior_means: list[Tensor], data: FitData
    ) -> Mapping[str, Any]:
        search = _search(network, prior_means, data)
        return {**_search_record(search), "training_objective_per_epoch": [], "training": None}


class Diagonal(ElementwiseGaussian):
    """Mean and per-weight σ trained on a bound surrogate, from the isotropic search's Q."""

    name = "diagonal"
    description = "mean and per-weight σ trained on the kl bound surrogate"
    trained = True

    def fit(
        self, network: StochasticNetwork, prior_means: list[Tensor], data: FitData
    ) -> Mapping[str, Any]:
        search = _search(network, prior_means, data)
        recipe = data.training
        log_term = math.log(2.0 * math.sqrt(data.n_bound) / data.delta_per_choice)
        hook = data.progress(
            "training diagonal posterior", recipe.epochs * int(data.x_train.shape[0])
        )

        def select(net: StochasticNetwork) -> float:
            return estimate_bound(
                net,
                prior_means,
                data.grid,
                data.x_search,
                data.y_search,
                n_bound=data.n_bound,
                log_term=log_term,
                stream=data.selection_stream,
                batch_size=data.batch_size,
                device=data.device,
            )[1]

        history = train_diagonal_posterior(
            network,
            prior_means,
            data.grid.scales[search.prior_index],
            data.x_train,
            data.y_train,
            recipe,
            n_bound=data.n_bound,
            log_term=log_term,
            device=data.device,
            select=select,
            progress=hook,
        )
        return {
            **_search_record(search),
            "training_objective_per_epoch": list(history.objective_per_epoch),
            "training": history.to_dict(),
        }


#: Family name → family. The one place that lists them.
FAMILIES: dict[str, PosteriorFamily] = {"isotropic": Isotropic(), "diagonal": Diagonal()}


def family(name: str) -> PosteriorFamily:
    """The registered family ``name`` (InvalidInputError naming the valid ones otherwise)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown posterior family {name!r}; choose one of {', '.join(FAMILIES)}",
            param="--posterior",
        ) from None

"""One contract test over every registered posterior family: fit, KL, state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pacbound.certify.gaussian import CHOICE_KEYS
from pacbound.errors import InvalidInputError
from pacbound.posterior.families import FAMILIES, family
from pacbound.posterior.family import FitData
from pacbound.posterior.fit import TrainingRecipe, kl_over_grid
from pacbound.posterior.network import build_stochastic_network
from pacbound.posterior.priors import ScaleGrid
from pacbound.posterior.streams import DrawStream


def _fit_data(x: torch.Tensor, y: torch.Tensor) -> FitData:
    return FitData(
        x_search=x[:100],
        y_search=y[:100],
        x_train=x,
        y_train=y,
        n_bound=int(x.shape[0]),
        grid=ScaleGrid.log_spaced(1e-3, 1.0, 13),
        delta_pac_bayes=0.04,
        delta_per_choice=0.04 / 13,
        batch_size=64,
        training=TrainingRecipe(epochs=2, seed=11),
        search_stream=DrawStream(1, "search"),
        selection_stream=DrawStream(5, "selection"),
        device=torch.device("cpu"),
        progress=lambda description, total: lambda done: None,
    )


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_contract(name: str) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (200,), generator=gen)
    x = torch.randn(200, 5, generator=gen) + (2 * y[:, None] - 1).float()
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    network = build_stochastic_network(model)
    prior = [torch.zeros_like(p) for p in model.parameters()]
    fam = FAMILIES[name]
    record = fam.fit(network, prior, _fit_data(x, y))
    # The record holds exactly the choice fields the report's posterior block carries.
    assert set(record) == set(CHOICE_KEYS)
    assert (record["training"] is not None) == fam.trained
    sigmas = fam.sigmas(network)
    assert sigmas.numel() == sum(p.numel() for p in model.parameters()) and bool((sigmas > 0).all())
    if not fam.trained:  # one σ for every weight: the searched one
        assert torch.allclose(sigmas, torch.full_like(sigmas, record["sigma_isotropic_search"]))
    # The sufficient statistics give the same KL over the grid as the certified KL.
    grid = ScaleGrid.log_spaced(1e-2, 1.0, 5)
    approx = kl_over_grid(fam.kl_stats(network, prior), grid)
    exact = [fam.kl(network, prior, s) for s in grid.scales]
    assert approx == pytest.approx(exact, rel=1e-6)


def test_unknown_family_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidInputError, match="choose one of isotropic, diagonal"):
        family("lowrank")


def test_every_family_is_in_the_derived_lists() -> None:
    """The CLI's --posterior choices and the report schema's posterior kinds are FAMILIES."""
    from pacbound.cli.certify_cmd import certify
    from pacbound.report.validate import schema

    option = next(p for p in certify.params if p.name == "posterior")
    assert list(option.type.choices) == list(FAMILIES)  # type: ignore[attr-defined]
    results = schema()["$defs"]["gaussian_results"]["properties"]
    assert results["posterior"]["properties"]["kind"]["enum"] == list(FAMILIES)

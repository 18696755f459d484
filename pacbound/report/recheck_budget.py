"""The δ budget and the σ_p grid of a Gaussian report, re-derived from its recorded options.

Nothing in ``results.delta_budget`` or ``results.prior`` is taken as given: the grid is
rebuilt value for value from ``options.prior_scales`` (a list grid from its values, a log
grid from its range and size), the budget by certify's own
:meth:`~pacbound.certify.gaussian.GaussianOptions.budget` from ``options.delta``,
``options.mc_delta`` and that grid's size, and σ_p must be the grid value certify chooses.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pacbound.errors import InvalidInputError
from pacbound.report.recheck import FieldCheck


def recorded_grid(opts: dict[str, Any]) -> Any:
    """The prior-scale grid the recorded options describe, rebuilt value for value (a list
    grid from its values, a log grid from its range and size)."""
    from pacbound.posterior.priors import ScaleGrid

    recorded = opts.get("prior_scales")
    if not isinstance(recorded, dict):
        raise InvalidInputError(
            "the report's options.prior_scales is missing; the prior-scale grid and the δ it "
            "costs cannot be re-derived"
        )
    return ScaleGrid.from_dict(recorded)


def budget_from_options(opts: dict[str, Any], grid: Any) -> Any:
    """The δ budget the recorded options imply (δ, mc_delta, the grid's size), built by the
    code certify uses: nothing in the reported ``delta_budget`` is taken as given."""
    from pacbound.certify.gaussian_options import GaussianOptions

    options = GaussianOptions(prior_scales=grid, delta=opts["delta"], mc_delta=opts.get("mc_delta"))
    return options.budget()


def grid_identity(recorded: dict[str, Any]) -> dict[str, Any]:
    return {k: recorded.get(k) for k in ("size", "min", "max", "values_sha256")}


def scale_checks(
    res: dict[str, Any],
    opts: dict[str, Any],
    grid: Any,
    network: Any,
    prior_means: list[Tensor],
    saved: Any,
) -> tuple[list[FieldCheck], float]:
    """The grid is the recorded one, σ_p is its KL-minimising value (as certify chooses it),
    and the posterior file's σ_p is that value. Returns the checks and the re-derived σ_p."""
    from pacbound.posterior.fit import kl_over_grid, kl_sufficient_stats

    rebuilt = grid_identity(grid.to_dict())
    j = int(kl_over_grid(kl_sufficient_stats(network, prior_means), grid).argmin())
    checks = [
        FieldCheck("options.prior_scales", grid_identity(opts["prior_scales"]), rebuilt),
        FieldCheck("prior.grid", grid_identity(res["prior"]["grid"]), rebuilt),
        FieldCheck("prior.scale_index", res["prior"]["scale_index"], j),
        FieldCheck("prior.scale", res["prior"]["scale"], grid.scales[j]),
        FieldCheck("prior.scale (file)", grid.scales[j], saved.prior_scale),
    ]
    return checks, float(grid.scales[j])

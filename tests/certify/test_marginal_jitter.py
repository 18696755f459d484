"""``--jitter`` as a grid: part of the prior's hyperparameter union bound (issue 15).

A grid point whose kernel is not positive definite gives no certificate (the trivial bound 1
in the search record) but still costs its δ/|grid|; the chosen point's certificate is then
exactly the single-jitter one with δ_PB and δ_IS both halved (same seed, same draws), and
only a grid in which every point fails ends with exit 4, whose message suggests no value
derived from S's kernel.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pacbound.certify.marginal import (
    NO_RESOLUTION,
    REPRODUCIBILITY_MARGIN,
    BelowResolution,
    NotPositiveDefinite,
    Sample,
    _cholesky,
    certify_point,
    choose_kernel,
    not_positive_definite,
)
from pacbound.certify.marginal_options import MarginalOptions
from pacbound.errors import NumericalError

#: x₁ and x₂ differ by 1e-13: their kernel rows agree to ~1e-26, below float64's resolution,
#: so only the white noise separates them (a jitter of 1e-300 does not)
X = np.array([[1.0, 0.0], [1.0, 1e-13], [0.0, 1.0]])
LABELS = np.array([0, 1, 1])
R = 1.0 + REPRODUCIBILITY_MARGIN


def _options(jitter: tuple[float, ...]) -> MarginalOptions:
    return MarginalOptions(
        kernel="relu",
        depth=1,
        sigma_w=(1.0,),
        sigma_b=(0.1,),
        jitter=jitter,
        delta=0.05,
        seed=0,
        is_samples=300,
        is_delta=0.02,
        max_memory=1 << 30,
        num_classes=2,
    )


def _sample() -> Sample:
    return Sample(torch.tensor(X), LABELS, 2, None)


def test_a_failed_jitter_costs_its_delta_share_and_gives_no_certificate() -> None:
    grid = _options((1e-300, 1e-6))
    assert grid.grid() == ((1.0, 0.1, 1e-300), (1.0, 0.1, 1e-6)) and grid.grid_size == 2
    best, search = choose_kernel(_sample(), grid)
    assert [p["jitter"] for p in search] == [1e-300, 1e-6]
    assert search[0]["bound"] == 1.0 and search[0]["log_lower"] is None
    assert search[0]["failed"] == NO_RESOLUTION and "failed" not in search[1]
    res = best.results
    assert best.index == 1 and res["kernel"]["jitter"] == 1e-6 and res["kernel"]["grid_size"] == 2
    parts = {p["name"]: p for p in res["delta_budget"]["parts"]}
    assert parts["pac-bayes"]["grid_size"] == parts["importance-sampling"]["grid_size"] == 2
    assert parts["pac-bayes"]["per_choice"] == pytest.approx(0.03 / 2, rel=1e-15)
    assert parts["importance-sampling"]["per_choice"] == pytest.approx(0.02 / 2, rel=1e-15)
    # the same prior certified alone: the same draws, ln(1/δ_IS) one ln 2 cheaper
    alone = certify_point(0, _sample(), _options((1e-6,))).results
    lower, single = res["log_orthant"], alone["log_orthant"]
    assert lower["log_estimate"] == single["log_estimate"]
    assert lower["log_lower"] / R == pytest.approx(single["log_lower"] / R - math.log(2), abs=1e-12)
    # the bound pays δ_PB/2 in the PAC-Bayes-kl inequality (n = 3), then the 1e-9 margin
    exact = 1 - math.exp(-(res["kl_nats"] + math.log(2 * math.sqrt(3) / 0.015)) / 3)
    assert res["bound"] == pytest.approx(exact * R, rel=1e-13) and res["bound"] > exact
    assert res["bound"] > alone["bound"]  # the grid's price, paid although one point failed


def test_every_jitter_failing_is_exit_4_without_a_value_from_s() -> None:
    with pytest.raises(NotPositiveDefinite) as caught:
        choose_kernel(_sample(), _options((1e-300, 1e-299)))
    message = str(caught.value)
    assert isinstance(caught.value, NumericalError)  # exit 4
    assert "no certificate at every grid point of --jitter 1e-300, 1e-299" in message
    assert NO_RESOLUTION in message
    assert "after seeing S" in message and "--jitter grid fixed in advance" in message
    assert "mean" not in message and "e.g. 1e-6 ×" not in message
    # one point alone: why (the floor is computed from S's kernel, but only to refuse)
    with pytest.raises(BelowResolution, match=r"--jitter 1e-300 is below the float64 resol"):
        choose_kernel(_sample(), _options((1e-300,)))


def test_a_failed_cholesky_names_every_jitter_and_suggests_no_value_from_s() -> None:
    """Above the resolution floor a factorisation can still fail (an indefinite matrix):
    the message names the jitter and asks for a grid fixed in advance."""
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(NotPositiveDefinite, match=r"--jitter 1e-06 \(its Cholesky") as caught:
        _cholesky(indefinite, 1e-6)
    assert "--jitter grid fixed in advance" in str(caught.value)
    assert "--jitter 1e-06, 0.0001 at every grid point" in not_positive_definite((1e-6, 1e-4))


def test_the_jitter_grid_multiplies_the_kernel_grid() -> None:
    options = replace(_options((1e-6, 1e-4)), sigma_w=(1.0, 2.0))
    assert options.grid_size == 4
    assert options.grid() == (
        (1.0, 0.1, 1e-6),
        (1.0, 0.1, 1e-4),
        (2.0, 0.1, 1e-6),
        (2.0, 0.1, 1e-4),
    )
    assert options.to_dict()["jitter"] == [1e-6, 1e-4]
    assert _options(1e-6).jitter == (1e-6,)  # type: ignore[arg-type]  # a float: a grid of one

"""``--mc-draws``: per-batch Monte-Carlo draws through the Gaussian method — recorded,
re-derived by ``verify``, said in the table — and per-example results unchanged."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from torch import nn

from pacbound.bounds import mc_upper_per_batch, mc_upper_per_example
from pacbound.certify.gaussian_facts import gaussian_facts
from pacbound.certify.gaussian_method import GAUSSIAN
from pacbound.certify.gaussian_monte_carlo import resolve_mc_draws
from pacbound.errors import InvalidInputError
from pacbound.posterior.network import build_stochastic_network
from pacbound.posterior.risk import per_example_bytes
from tests.certify.test_gaussian_method import PARAMS, _inputs, _without, task  # noqa: F401


def _run(task: Path, **extra: Any) -> Any:  # noqa: F811
    options = GAUSSIAN.options({**PARAMS, **extra})
    return GAUSSIAN.run(_inputs(task), options)


def test_per_batch_counts_batches_records_them_and_rederives(task: Path) -> None:  # noqa: F811
    run = _run(task, mc_draws="per-batch")
    res = dict(run.certificate.results)
    emp = res["empirical_risk"]
    # n = 400 in batches of at most 128: B = 100 (the largest divisor), 2 passes → 8 draws
    assert (emp["draws_per"], emp["batch"], emp["draws"], emp["mc_passes"]) == ("batch", 100, 8, 2)
    delta_mc = next(p for p in res["delta_budget"]["parts"] if p["name"] == "monte-carlo")
    expected = mc_upper_per_batch(
        emp["estimate"], n=400, passes=2, batch=100, delta=delta_mc["delta"]
    )
    assert emp["upper_bound"] == expected.value
    assert (
        emp["upper_bound"]
        > mc_upper_per_example(emp["estimate"], n=400, passes=2, delta=delta_mc["delta"]).value
    )
    assert run.options["mc_draws"] == "per-batch"
    assert any("per-batch Monte-Carlo draws" in w and "8 draws" in w for w in run.warnings)
    recorded = GAUSSIAN.options_from_report(run.options)
    again = GAUSSIAN.rederive(_inputs(task), recorded, run.certificate.hypothesis)
    assert dict(again.results) == _without(res, GAUSSIAN.choice_fields)
    facts = gaussian_facts(res)
    assert facts.qualifiers["posterior"] == "Gaussian, isotropic, per-batch draws (B=100)"
    assert dict(facts.rows)["  upper bound"].endswith(
        "(8 draws, one per batch of 100 examples, 2 passes)"
    )


def test_per_example_is_the_default_and_unchanged(task: Path) -> None:  # noqa: F811
    auto = _run(task)
    explicit = _run(task, mc_draws="per-example")
    emp = auto.certificate.results["empirical_risk"]
    assert (emp["draws_per"], emp["batch"], emp["draws"]) == ("example", 1, 800)
    assert auto.options["mc_draws"] == "per-example"  # auto recorded as resolved
    assert dict(auto.certificate.results) == dict(explicit.certificate.results)
    assert not any("per-batch" in w for w in auto.warnings)
    facts = gaussian_facts(dict(auto.certificate.results))
    assert facts.qualifiers["posterior"] == "Gaussian, isotropic"
    assert dict(facts.rows)["  upper bound"].endswith("(800 draws, 2 passes)")


def test_a_report_without_mc_draws_reads_as_per_example() -> None:
    options = GAUSSIAN.options(PARAMS)
    recorded = {"method": "gaussian", **options.to_dict(), "delta": options.delta}
    recorded["sampler"] = "layers"
    del recorded["mc_draws"]
    assert GAUSSIAN.options_from_report(recorded).mc_draws == "per-example"
    assert GAUSSIAN.record_options(options)["mc_draws"] is None  # auto: not compared to argv
    with pytest.raises(InvalidInputError, match="--mc-draws 'sometimes': choose one of"):
        GAUSSIAN.options({**PARAMS, "mc_draws": "sometimes"})


def test_auto_chooses_per_batch_when_one_batch_does_not_fit_the_budget() -> None:
    network = build_stochastic_network(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()))
    need = per_example_bytes(network, 64)
    assert need > 0

    def options(mc_draws: str, budget: int | None) -> Any:
        return SimpleNamespace(mc_draws=mc_draws, max_memory=budget, certificate_batch_size=64)

    assert resolve_mc_draws(network, options("auto", need)) == "per-example"
    assert resolve_mc_draws(network, options("auto", need - 1)) == "per-batch"
    assert resolve_mc_draws(network, options("auto", None)) == "per-example"
    assert resolve_mc_draws(network, options("per-example", 1)) == "per-example"
    assert resolve_mc_draws(network, options("per-batch", None)) == "per-batch"

"""The Gaussian certificate's Monte-Carlo risk (MATH.md §3, §10): Q's error rate on S_bound
from fresh draws of the run's Monte-Carlo stream and its Chernoff upper bound at δ′.

``--mc-draws per-example``: a fresh θ ~ Q for every example of every pass, n·K draws.
``--mc-draws per-batch``: one θ ~ Q per batch of exactly B examples (B the largest divisor
of n not above the certificate batch size), K·n/B draws: the batch error rates are the
independent [0, 1] variables, so the Monte-Carlo slack is that of K·n/B draws.
``--mc-draws auto``: per-example unless the per-example draws of one certificate batch do
not fit the memory budget (:func:`~pacbound.posterior.risk.per_example_fits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pacbound.bounds import (
    BoundResult,
    DeltaBudget,
    mc_upper_per_batch,
    mc_upper_per_example,
    per_batch_size,
)
from pacbound.certify.common import ProgressFactory
from pacbound.certify.gaussian_options import GaussianOptions, random_stream
from pacbound.posterior.network import StochasticNetwork
from pacbound.posterior.risk import (
    count_per_batch_errors,
    count_stochastic_errors,
    per_example_fits,
)


def monte_carlo_risk(
    network: StochasticNetwork,
    x_bound: Tensor,
    y_bound: Tensor,
    budget: DeltaBudget,
    options: GaussianOptions,
    device: torch.device,
    progress: ProgressFactory,
) -> tuple[float, BoundResult, str]:
    """Q's error rate on S_bound from fresh draws (the run's Monte-Carlo stream) and its
    Chernoff upper bound at the Monte-Carlo part of δ, with ``--mc-draws`` resolved:
    n·K per-example draws, or K·n/B per-batch draws (B: :func:`per_batch_size`)."""
    n_bound = int(x_bound.shape[0])
    mc_draws = resolve_mc_draws(network, options)
    delta_mc = budget.part("monte-carlo").delta
    hook = progress("Monte-Carlo risk (fresh draws)", options.mc_passes * n_bound)
    stream = random_stream(options.seed, "monte_carlo")
    if mc_draws == "per-batch":
        batch = per_batch_size(n_bound, options.certificate_batch_size)
        count = count_per_batch_errors(
            network,
            x_bound,
            y_bound,
            passes=options.mc_passes,
            stream=stream,
            batch=batch,
            device=device,
            progress=hook,
        )
        mc = mc_upper_per_batch(
            count.rate, n=n_bound, passes=options.mc_passes, batch=batch, delta=delta_mc
        )
        return count.rate, mc, mc_draws
    count = count_stochastic_errors(
        network,
        x_bound,
        y_bound,
        passes=options.mc_passes,
        stream=stream,
        batch_size=options.certificate_batch_size,
        device=device,
        progress=hook,
    )
    mc = mc_upper_per_example(count.rate, n=n_bound, passes=options.mc_passes, delta=delta_mc)
    return count.rate, mc, mc_draws


def resolve_mc_draws(network: StochasticNetwork, options: GaussianOptions) -> str:
    """``--mc-draws auto``: per-example draws unless those of one certificate batch do not
    fit the memory budget (``--max-memory``; none set: they fit), then per-batch."""
    if options.mc_draws != "auto":
        return options.mc_draws
    fits = per_example_fits(network, options.certificate_batch_size, options.max_memory)
    return "per-example" if fits else "per-batch"


def monte_carlo_warning(results: Mapping[str, Any], options: GaussianOptions) -> str | None:
    """What to tell the user about per-batch draws (``None`` for per-example draws)."""
    emp = results["empirical_risk"]
    if emp.get("draws_per") != "batch":
        return None
    batch, wanted = emp["batch"], options.certificate_batch_size
    chosen = "chosen by --mc-draws auto: " if options.mc_draws == "auto" else ""
    message = (
        f"per-batch Monte-Carlo draws ({chosen}one draw of Q per batch of {batch} examples, "
        f"{emp['draws']} draws): the Monte-Carlo slack is that of {emp['draws']} draws, not "
        f"{results['n'] * emp['mc_passes']}"
    )
    if batch < wanted / 2:
        message += (
            f"; B = {batch} is the largest divisor of n = {results['n']} not above the batch "
            f"size {wanted}: fewer examples per draw cost more passes' time"
        )
    return message

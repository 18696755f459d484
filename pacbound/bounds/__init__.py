"""Pure-math bounds: floats and NumPy arrays in, frozen result objects out. No torch here.

Conventions: every bound is ``f(empirical_risk, *, kl, n, delta)`` with the complexity in
nats; results are :class:`BoundResult`; δ accounting is a :class:`DeltaBudget`.
"""

from pacbound.bounds.binomial import binomial_tail_inverse, clopper_pearson_upper, test_set_bound
from pacbound.bounds.budget import DeltaBudget, DeltaPart
from pacbound.bounds.kl import binary_kl, kl_inv_lower, kl_inv_upper
from pacbound.bounds.monte_carlo import (
    mc_risk_upper_bound,
    mc_upper_per_batch,
    mc_upper_per_example,
    mc_upper_whole_network,
    per_batch_size,
)
from pacbound.bounds.occam import occam_binomial, occam_kl
from pacbound.bounds.pac_bayes import (
    DEFAULT_CATONI_GRID,
    log_maurer_xi,
    pac_bayes_catoni,
    pac_bayes_catoni_grid,
    pac_bayes_classic,
    pac_bayes_kl,
    pac_bayes_kl_xi,
    pac_bayes_lambda,
    pac_bayes_quad,
)
from pacbound.bounds.result import BoundResult
from pacbound.bounds.rounding import format_up, round_up
from pacbound.bounds.units import bits_to_nats, nats_to_bits

__all__ = [
    "DEFAULT_CATONI_GRID",
    "BoundResult",
    "DeltaBudget",
    "DeltaPart",
    "binary_kl",
    "binomial_tail_inverse",
    "bits_to_nats",
    "clopper_pearson_upper",
    "format_up",
    "kl_inv_lower",
    "kl_inv_upper",
    "log_maurer_xi",
    "mc_risk_upper_bound",
    "mc_upper_per_batch",
    "mc_upper_per_example",
    "mc_upper_whole_network",
    "nats_to_bits",
    "occam_binomial",
    "occam_kl",
    "pac_bayes_catoni",
    "pac_bayes_catoni_grid",
    "pac_bayes_classic",
    "pac_bayes_kl",
    "pac_bayes_kl_xi",
    "pac_bayes_lambda",
    "pac_bayes_quad",
    "per_batch_size",
    "round_up",
    "test_set_bound",
]

"""The outcome of a Gaussian certification: every number at full precision, the report's
``results`` block (:meth:`GaussianCertificate.to_dict`) and the posterior file of the
certified Q (:meth:`GaussianCertificate.hypothesis_bytes`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from pacbound.bounds import BoundResult, DeltaBudget
from pacbound.certify.common import Verdict
from pacbound.certify.gaussian_options import GaussianOptions
from pacbound.posterior.io import posterior_bytes
from pacbound.posterior.network import StochasticNetwork

CERTIFIED_CLASSIFIER = (
    "the Gaussian posterior Q = N(mu, diag sigma^2) over the weights: a stochastic "
    "classifier that draws fresh weights for every prediction, NOT the checkpoint's "
    "point weights"
)


@dataclass(frozen=True)
class GaussianCertificate:
    """The outcome of a Gaussian certification run (all numbers at full precision)."""

    certificate: BoundResult
    monte_carlo: BoundResult
    information: dict[str, BoundResult]
    budget: DeltaBudget
    verdict: Verdict
    kl_nats: float
    n_bound: int
    empirical_risk_estimate: float
    prior: dict[str, Any]
    posterior: dict[str, Any]
    heldout: BoundResult | None
    heldout_budget: DeltaBudget | None
    agreement: dict[str, Any]
    checkpoint: dict[str, Any] | None
    timings: dict[str, float]
    network: StochasticNetwork = field(repr=False)
    prior_means: list[Tensor] = field(repr=False)
    prior_scale: float
    options: GaussianOptions = field(repr=False)

    @property
    def value(self) -> float:
        return self.certificate.value

    def hypothesis_bytes(self) -> bytes:
        """The posterior file (``--save-posterior``) of the certified Q and its prior."""
        kind = self.posterior["kind"]
        return posterior_bytes(self.network, self.prior_means, self.prior_scale, kind)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": "gaussian",
            "certified_classifier": CERTIFIED_CLASSIFIER,
            "bound": self.certificate.value,
            "inequality": self.certificate.method,
            "kl_nats": self.kl_nats,
            "n": self.n_bound,
            "empirical_risk": {
                "estimate": self.empirical_risk_estimate,
                "upper_bound": self.monte_carlo.value,
                "draws": self.monte_carlo.n,
                "mc_passes": self.options.mc_passes,
                # one draw of Q per example, or per batch of `batch` examples (MATH.md §10)
                "draws_per": "batch" if self.options.mc_draws == "per-batch" else "example",
                "batch": int(self.monte_carlo.terms.get("batch", 1)),
            },
            "verdict": self.verdict.to_dict(),
            "delta_budget": self.budget.to_dict(),
            "certificate_terms": self.certificate.to_dict(),
            "information_only": {k: v.to_dict() for k, v in self.information.items()},
            "prior": self.prior,
            "posterior": self.posterior,
            "heldout": None,
        }
        if self.heldout is not None and self.heldout_budget is not None:
            out["heldout"] = {
                "certified_classifier": "the checkpoint's deterministic point weights",
                "bound": self.heldout.value,
                "errors": int(self.heldout.terms["errors"]),
                "n": self.heldout.n,
                "delta": self.heldout.delta,
                "note": "a separate statement with its own delta",
            }
        out["agreement"] = self.agreement
        out["checkpoint"] = self.checkpoint
        return out

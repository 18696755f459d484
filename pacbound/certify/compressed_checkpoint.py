"""What a compression certificate says about the user's checkpoint h (issue #11).

The Occam certificate (:mod:`pacbound.certify.occam`) bounds the error of the DECODED
model h', not of the checkpoint h it was compressed from. Next to it:

- **information** (not bounds, the training data chose h'): h's own training errors and how
  often h' disagrees with h on the training inputs;
- **a held-out bound for h** (``heldout``): the test-set bound (Langford 2005, Thm 3.3) on
  h's errors on labeled examples never used for anything else; a separate statement with its
  own δ_H;
- **a certificate for h** (MATH.md §11): 1[h(x) ≠ y] ≤ 1[h'(x) ≠ y] + 1[h(x) ≠ h'(x)], so
  L(h) ≤ L(h') + D(h, h'). h' depends on the training sample only, so on m inputs drawn
  independently of it (the held-out inputs with their labels ignored, or unlabeled ones)
  the disagreement indicators are i.i.d. Bernoulli(D) given the sample, and D is bounded by
  the exact binomial tail at δ_D. With the Occam part at δ, the sum holds with probability
  ≥ 1 − δ − δ_D.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.bounds import BoundResult
from pacbound.bounds.binomial import test_set_bound
from pacbound.bounds.checkpoint import disagreement_bound
from pacbound.bounds.validation import check_count
from pacbound.certify.common import check_deterministic, checkpoint_block
from pacbound.certify.occam_options import CompressionOptions
from pacbound.errors import InvalidInputError, NumericalError, PacboundError
from pacbound.parallel.training import summed_counts
from pacbound.posterior.risk import shard_batches

HELDOUT_CLASSIFIER = "the checkpoint's deterministic point weights"
TRAINING_NOTE = (
    "measured on the training data that chose the decoded model: information, not a bound"
)


@dataclass(frozen=True)
class Agreement:
    """The checkpoint's errors (when labels are given) and its disagreements with the
    decoded model on ``n`` inputs."""

    n: int
    disagreements: int
    errors: int | None = None


@torch.no_grad()
def compare_predictions(
    checkpoint: nn.Module,
    decoded: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    batch_size: int = 2048,
    device: torch.device | None = None,
) -> Agreement:
    """One pass over ``x``: how often the two models' argmax predictions differ, and (with
    labels ``y``) how many errors the checkpoint makes. Each rank compares its shard
    (:func:`pacbound.posterior.risk.shard_batches`) and the integer counts are summed over
    ranks: the same counts at any world size."""
    dev = device or torch.device("cpu")
    check_count(batch_size, "--batch-size")
    errors = disagreements = total = 0
    failure: PacboundError | None = None
    try:
        for rows in shard_batches(int(x.shape[0]), batch_size):
            xb = x[rows].to(dev)
            h, h_prime = checkpoint(xb), decoded(xb)
            if not (torch.all(torch.isfinite(h)) and torch.all(torch.isfinite(h_prime))):
                raise NumericalError("the network produced NaN/Inf outputs during the comparison")
            pred = h.argmax(dim=1)
            disagreements += int((pred != h_prime.argmax(dim=1)).sum())
            if y is not None:
                errors += int((pred != y[rows].to(dev)).sum())
            total += int(xb.shape[0])
    except PacboundError as exc:
        failure = exc
    total, disagreements, errors = summed_counts((total, disagreements, errors), failure)
    return Agreement(total, disagreements, None if y is None else errors)


@dataclass(frozen=True)
class CheckpointStatements:
    """The checkpoint's side of a compression certificate (see the module docstring)."""

    training: Agreement
    certificate: BoundResult
    delta: float
    heldout: BoundResult | None = None
    disagreement: BoundResult | None = None
    disagreement_source: str | None = None
    disagreement_counts: Agreement | None = None

    def to_dict(self) -> dict[str, Any]:
        """``checkpoint_on_training``, ``heldout`` and ``checkpoint`` (the last two may be
        None), merged into the compression results."""
        t = self.training
        assert t.errors is not None
        out: dict[str, Any] = {
            "checkpoint_on_training": {
                "n": t.n,
                "errors": t.errors,
                "empirical_risk": t.errors / t.n,
                "disagreements_with_decoded": t.disagreements,
                "disagreement_rate": t.disagreements / t.n,
                "note": TRAINING_NOTE,
            },
            "heldout": None,
            "checkpoint": None,
        }
        if self.heldout is not None:
            out["heldout"] = {
                "certified_classifier": HELDOUT_CLASSIFIER,
                "bound": self.heldout.value,
                "errors": int(self.heldout.terms["errors"]),
                "n": self.heldout.n,
                "delta": self.heldout.delta,
                "note": "a separate statement with its own delta",
            }
        if self.disagreement is not None:
            assert self.disagreement_counts is not None and self.disagreement_source is not None
            out["checkpoint"] = checkpoint_block(
                self.certificate,
                self.disagreement,
                source=self.disagreement_source,
                disagreements=self.disagreement_counts.disagreements,
                inputs=self.disagreement_counts.n,
                certified="decoded",
                delta_certified=self.delta,
            )
        return out


@dataclass(frozen=True)
class CheckpointSets:
    """The checkpoint h and the sets its statements use: labeled ``heldout`` examples and
    ``unlabeled`` inputs, both never used for anything else (not for training h, nor for
    choosing anything in the certificate)."""

    module: nn.Module
    heldout: tuple[Tensor, Tensor] | None = None
    unlabeled: Tensor | None = None


def compare_with_checkpoint(
    sets: CheckpointSets,
    decoded: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    certificate: BoundResult,
    options: CompressionOptions,
    device: torch.device | None = None,
) -> CheckpointStatements:
    """The checkpoint's training errors and disagreements with the ``decoded`` model on
    (x, y), its held-out bound on ``sets.heldout`` (δ_H), and with held-out or unlabeled
    inputs (the unlabeled ones when both are given) the certificate
    L(h) ≤ L(decoded) + D(h, decoded) at δ + δ_D, where ``certificate`` is the decoded
    model's Occam bound at δ (δ_H, δ_D: ``options.statement_deltas``).
    """
    dev = device or torch.device("cpu")
    delta = options.delta
    delta_h, delta_d = options.statement_deltas
    checkpoint = sets.module.to(dev).eval()
    if options.check_deterministic:
        check_deterministic(checkpoint, x, dev)
    decoded.eval()

    def compare(inputs: Tensor, labels: Tensor | None) -> Agreement:
        if int(inputs.shape[0]) == 0:
            raise InvalidInputError("the held-out or unlabeled set has no examples")
        return compare_predictions(
            checkpoint, decoded, inputs, labels, batch_size=options.batch_size, device=dev
        )

    statements = CheckpointStatements(compare(x, y), certificate, delta)
    held = None if sets.heldout is None else compare(*sets.heldout)
    if held is not None:
        assert held.errors is not None
        hbound = test_set_bound(held.errors / held.n, n=held.n, delta=delta_h)
        statements = replace(statements, heldout=hbound)
    source, counts = "heldout", held
    if sets.unlabeled is not None:
        source, counts = "unlabeled", compare(sets.unlabeled, None)
    if counts is not None:
        bound = disagreement_bound(counts.disagreements, m=counts.n, delta=delta_d)
        statements = replace(
            statements,
            disagreement=bound,
            disagreement_source=source,
            disagreement_counts=counts,
        )
    return statements

"""Statements about the checkpoint next to a compression certificate (MATH.md §11)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from pacbound.bounds import test_set_bound as heldout_bound
from pacbound.bounds.checkpoint import checkpoint_bound, disagreement_bound
from pacbound.certify.common import checkpoint_block, model_num_outputs
from pacbound.certify.compressed_checkpoint import (
    CheckpointSets,
    CheckpointStatements,
    compare_predictions,
    compare_with_checkpoint,
)
from pacbound.certify.factories import seeded_factory
from pacbound.certify.method import Certificate
from pacbound.certify.occam import certify_message, decoder_for
from pacbound.certify.occam_options import CompressionOptions, statement_deltas
from pacbound.certify.quantize import certify_quantized
from pacbound.compressors import CompressedMessage
from pacbound.errors import InvalidInputError, NumericalError
from tests.certify.test_compression import FACTORY, _task

QUANTIZE = CompressionOptions(method="quantize", levels=(2, 4), qat_steps=0)  # type: ignore[arg-type]


def _trained() -> nn.Module:
    x, y = _task()
    model = FACTORY(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Certificate]:
    x, y = _task()
    checkpoint = _trained()
    return checkpoint, certify_quantized(checkpoint, FACTORY, x, y, num_classes=2, options=QUANTIZE)


def _predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _decoded(cert: Certificate) -> nn.Module:
    message = CompressedMessage.from_bytes(cert.hypothesis)
    return decoder_for(message, FACTORY).decompress(cert.hypothesis).eval()


def _statements(
    cert: Certificate,
    checkpoint: nn.Module,
    heldout: tuple[torch.Tensor, torch.Tensor] | None = None,
    unlabeled: torch.Tensor | None = None,
    **changes: object,
) -> CheckpointStatements:
    x, y = _task()
    return compare_with_checkpoint(
        CheckpointSets(checkpoint, heldout=heldout, unlabeled=unlabeled),
        _decoded(cert),
        x,
        y,
        certificate=cert.bound,
        options=dataclasses.replace(QUANTIZE, **changes),  # type: ignore[arg-type]
    )


def test_training_comparison_counts_errors_and_disagreements(
    setup: tuple[nn.Module, Certificate],
) -> None:
    checkpoint, cert = setup
    x, y = _task()
    statements = _statements(cert, checkpoint)
    pred, decoded = _predictions(checkpoint, x), _predictions(_decoded(cert), x)
    errors, differ = int((pred != y).sum()), int((pred != decoded).sum())
    assert (statements.training.errors, statements.training.disagreements) == (errors, differ)
    assert differ > 0  # two levels really change some predictions on this task
    out = json.loads(json.dumps(statements.to_dict(), allow_nan=False))
    assert out["checkpoint_on_training"] == {
        "n": 600,
        "errors": errors,
        "empirical_risk": errors / 600,
        "disagreements_with_decoded": differ,
        "disagreement_rate": differ / 600,
        "note": "measured on the training data that chose the decoded model: information, "
        "not a bound",
    }
    # Without held-out or unlabeled inputs there is no statement about the checkpoint.
    assert out["heldout"] is None and out["checkpoint"] is None


def test_heldout_bound_and_checkpoint_certificate(
    setup: tuple[nn.Module, Certificate],
) -> None:
    checkpoint, cert = setup
    hx, hy = _task(n=300, seed=9)
    statements = _statements(cert, checkpoint, heldout=(hx, hy))
    pred = _predictions(checkpoint, hx)
    errors = int((pred != hy).sum())
    k = int((pred != _predictions(_decoded(cert), hx)).sum())
    out = statements.to_dict()
    assert out["heldout"] == {
        "certified_classifier": "the checkpoint's deterministic point weights",
        "bound": heldout_bound(errors / 300, n=300, delta=0.05).value,
        "errors": errors,
        "n": 300,
        "delta": 0.05,
        "note": "a separate statement with its own delta",
    }
    disagreement = disagreement_bound(k, m=300, delta=0.01)  # default δ_D = δ/5
    block = out["checkpoint"]
    assert block["bound"] == checkpoint_bound(cert.bound, disagreement).value
    assert block["bound"] >= cert.value + disagreement.value
    assert block["bound_on_certified"] == cert.value
    assert block["disagreement"] == {
        "source": "heldout",
        "inputs": 300,
        "disagreements": k,
        "rate": k / 300,
        "upper_bound": disagreement.value,
        "delta": 0.01,
        "draws_per_input": 1,
    }
    assert block["delta_total"] == 0.05 + 0.01
    assert block["statement"] == "L(h) ≤ L(decoded) + D(h, decoded)"
    assert block["certified_classifier"] == "the checkpoint's deterministic weights"


def test_unlabeled_inputs_and_own_deltas(setup: tuple[nn.Module, Certificate]) -> None:
    checkpoint, cert = setup
    hx, hy = _task(n=300, seed=9)
    ux, _ = _task(n=1000, seed=11)
    statements = _statements(
        cert,
        checkpoint,
        heldout=(hx, hy),
        unlabeled=ux,
        heldout_delta=0.02,
        disagreement_delta=0.002,
        batch_size=128,
    )
    k = int((_predictions(checkpoint, ux) != _predictions(_decoded(cert), ux)).sum())
    out = statements.to_dict()
    assert out["heldout"]["delta"] == 0.02
    d = out["checkpoint"]["disagreement"]
    assert (d["source"], d["inputs"], d["disagreements"], d["delta"]) == (
        "unlabeled",
        1000,
        k,
        0.002,
    )
    assert d["upper_bound"] == disagreement_bound(k, m=1000, delta=0.002).value
    assert out["checkpoint"]["delta_total"] == 0.05 + 0.002
    # Unlabeled inputs alone give the checkpoint's certificate but no held-out bound.
    alone = _statements(cert, checkpoint, unlabeled=ux).to_dict()
    assert alone["heldout"] is None
    assert alone["checkpoint"]["disagreement"]["disagreements"] == k


def test_deltas_are_validated_under_the_options_names() -> None:
    assert statement_deltas(0.05, None, None) == (0.05, 0.01)
    assert statement_deltas(0.05, 0.1, 0.02) == (0.1, 0.02)
    with pytest.raises(InvalidInputError, match=r"^--disagreement-delta must be in \(0, 1\)"):
        statement_deltas(0.05, None, 0.0)
    with pytest.raises(InvalidInputError, match=r"^--heldout-delta must be in \(0, 1\)"):
        statement_deltas(0.05, 1.5, None)
    # the options resolve them once, with the same defaults
    assert CompressionOptions(delta=0.1).statement_deltas == (0.1, 0.02)
    with pytest.raises(InvalidInputError, match=r"^--disagreement-delta must be in \(0, 1\)"):
        CompressionOptions(disagreement_delta=2.0)


def test_the_certify_phase_with_the_checkpoint_adds_its_statements(
    setup: tuple[nn.Module, Certificate],
) -> None:
    checkpoint, cert = setup
    x, y = _task()
    hx, hy = _task(n=300, seed=9)
    sets = CheckpointSets(checkpoint, heldout=(hx, hy))
    full = certify_message(
        cert.hypothesis, FACTORY, x, y, options=QUANTIZE, seed=None, checkpoint=sets
    )
    expected = _statements(cert, checkpoint, heldout=(hx, hy)).to_dict()
    assert {k: full.results[k] for k in expected} == expected
    assert {k: v for k, v in full.results.items() if k not in expected} == {
        **cert.results,
        "search": full.results["search"],
        "compression": {**cert.results["compression"], "start": "artifact"},
    }


def test_compare_predictions_exact_counts_and_nan() -> None:
    swap = nn.Linear(2, 2, bias=False)
    ident = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        ident.weight.copy_(torch.eye(2))
        swap.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [3.0, 5.0], [1.0, -1.0]])
    y = torch.tensor([0, 1, 1, 1, 0])  # ident's predictions: 0, 1, 0, 1, 0 → one error
    got = compare_predictions(ident, swap, x, y, batch_size=2)
    assert (got.n, got.disagreements, got.errors) == (5, 5, 1)
    assert compare_predictions(ident, ident, x, batch_size=3).disagreements == 0
    assert compare_predictions(ident, ident, x).errors is None
    with pytest.raises(NumericalError, match="NaN/Inf"):
        compare_predictions(ident, swap, torch.tensor([[float("nan"), 0.0]]))


def test_model_num_outputs_is_the_models_not_the_datas() -> None:
    x, _ = _task()
    ten = seeded_factory(lambda: nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 10)))
    model = ten(0).train()
    assert model_num_outputs(model, x, torch.device("cpu")) == 10
    assert model.training  # the dry pass leaves the mode as it was
    with pytest.raises(InvalidInputError, match=r"\(B, classes\) tensor of scores; one input"):
        model_num_outputs(nn.Flatten(0), x, torch.device("cpu"))


def test_checkpoint_block_for_a_gaussian_certificate() -> None:
    """The same helper serves the Gaussian method: δ_total counts every part of Q's budget."""
    from pacbound.bounds import BoundResult

    q = BoundResult(0.2, "pac-bayes-kl", 0.1, 1000, 0.04)
    d = disagreement_bound(7, m=500, delta=0.01)
    block = checkpoint_block(
        q,
        d,
        source="unlabeled",
        disagreements=7,
        inputs=500,
        certified="Q",
        delta_certified=0.05,
    )
    assert block["bound"] == checkpoint_bound(q, d).value > 0.2 + d.value - 1e-15
    assert block["delta_total"] == 0.05 + 0.01
    assert block["statement"] == "L(h) ≤ L(Q) + D(h, Q)"
    assert block["disagreement"]["rate"] == 7 / 500


def test_verdict_uses_the_decoded_models_outputs(
    setup: tuple[nn.Module, Certificate],
) -> None:
    _, cert = setup
    assert (cert.verdict.num_classes, cert.verdict.chance_error) == (2, 0.5)
    x, y = _task()
    ten = seeded_factory(lambda: nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 10)))
    options = dataclasses.replace(QUANTIZE, levels=4)
    wide = certify_quantized(ten(3), ten, x, y, num_classes=2, options=options)
    assert wide.verdict.num_classes == 10
    assert wide.verdict.chance_error == pytest.approx(0.9)
    assert wide.results["verdict"]["chance_error"] == pytest.approx(0.9)

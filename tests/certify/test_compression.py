"""The compression methods' library functions on a small synthetic task (fast, CPU): the
choose phase (subspace training, post-hoc quantization) and the certify phase
(:func:`pacbound.certify.occam.certify_message`) that ``verify`` runs on the artifact."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch
from torch import nn

from pacbound.bounds import bits_to_nats, occam_binomial
from pacbound.certify.factories import seeded_factory
from pacbound.certify.method import Certificate
from pacbound.certify.occam import certify_message, decoder_for
from pacbound.certify.occam_method import verify_artifact
from pacbound.certify.occam_options import CompressionOptions, SubspaceRecipe
from pacbound.certify.quantize import certify_quantized
from pacbound.certify.subspace import certify_subspace
from pacbound.compressors import CompressedMessage
from pacbound.errors import InvalidInputError

N = 600
#: results fields that describe how the message was chosen (not re-derived by verify)
CHOICE = ("search", "compression")


def _task(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 10, generator=gen) + 1.0 * (2 * y[:, None] - 1).float()
    return x, y


def _build() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))  # D = 210


FACTORY = seeded_factory(_build)
OTHER = seeded_factory(lambda: nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2)))
FAST = CompressionOptions(
    d=(8, 24),
    levels=(3, 8),
    training=SubspaceRecipe(epochs=5, lr=0.05, batch_size=64),
    qat_steps=10,
    qat_examples=300,
    seed=2,
)
CHECK = CompressionOptions(delta=0.05)  # verify ARTIFACT without a report


def _subspace(**changes: Any) -> Certificate:
    x, y = _task()
    options = dataclasses.replace(FAST, **changes)
    return certify_subspace(FACTORY, x, y, num_classes=2, options=options)


@pytest.fixture(scope="module")
def cert() -> Certificate:
    return _subspace()


def _message(cert: Certificate) -> CompressedMessage:
    return CompressedMessage.from_bytes(cert.hypothesis)


def _decoded_errors(message_bytes: bytes) -> int:
    x, y = _task()
    message = CompressedMessage.from_bytes(message_bytes)
    model = decoder_for(message, FACTORY).decompress(message_bytes)
    with torch.no_grad():
        return int((model(x).argmax(dim=1) != y).sum())


def _without(results: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in results.items() if k not in fields}


def test_certificate_is_the_occam_bound_of_the_decoded_model(cert: Certificate) -> None:
    data, res = cert.hypothesis, cert.results
    errors = _decoded_errors(data)
    assert res["errors"] == errors and res["n"] == N
    assert res["empirical_risk"] == {
        "estimate": errors / N,
        "upper_bound": errors / N,
        "errors": errors,
        "draws": N,
    }
    assert res["code_length_bits"] == 8 * len(data) == sum(res["code_length_breakdown"].values())
    expected = occam_binomial(errors / N, kl=bits_to_nats(8 * len(data)), n=N, delta=0.05)
    assert cert.value == res["bound"] == expected.value
    # Every predeclared (d, L) was tried; the reported one has the smallest bound.
    search = res["search"]
    assert {(c["dimension"], c["levels"]) for c in search} == {(8, 3), (8, 8), (24, 3), (24, 8)}
    assert cert.value == min(c["bound"] for c in search)
    message = _message(cert)
    assert (message.dimension, message.codebook.levels) in {
        (c["dimension"], c["levels"]) for c in search if c["bound"] == cert.value
    }
    assert cert.budget.spent == 0.05 and len(cert.budget.parts) == 1
    assert errors / N <= cert.value <= 1.0
    assert cert.verdict.non_vacuous == (cert.value < 0.5)
    assert cert.method == res["method"] == "subspace"


def test_report_is_json_and_names_the_decoded_model(cert: Certificate) -> None:
    report = json.loads(json.dumps(cert.results, allow_nan=False))
    assert report["certified_classifier"].startswith("the decoded compressed model")
    assert report["code_length_bits"] == 8 * len(cert.hypothesis)
    assert report["compression"]["seed"] == 2 and report["compression"]["start"] == "zero"
    assert report["options"]["d"] == [8, 24]
    assert "checkpoint_on_training" not in report  # no checkpoint: no statements about it


def test_the_certify_phase_rederives_every_field_but_the_choice(cert: Certificate) -> None:
    x, y = _task()
    again = certify_message(cert.hypothesis, FACTORY, x, y, options=FAST, seed=2)
    assert _without(again.results, CHOICE) == _without(cert.results, CHOICE)
    assert again.results["compression"] == {**cert.results["compression"], "start": "artifact"}
    assert (
        again.results["search"]
        == [c for c in cert.results["search"] if c["bound"] == cert.value][:1]
    )
    # verify ARTIFACT without a report: the same phase, default options with the given δ
    checked = verify_artifact(cert.hypothesis, FACTORY, x, y, num_classes=2, options=CHECK)
    assert checked.value == cert.value
    for key in ("errors", "code_length_bits", "empirical_risk", "delta_budget", "verdict"):
        assert checked.results[key] == cert.results[key]
    # On other data the recount differs.
    other_x, other_y = _task(seed=5)
    elsewhere = verify_artifact(
        cert.hypothesis, FACTORY, other_x, other_y, num_classes=2, options=CHECK
    )
    assert elsewhere.results["errors"] == _decoded_errors_on(cert.hypothesis, other_x, other_y)


def _decoded_errors_on(data: bytes, x: torch.Tensor, y: torch.Tensor) -> int:
    model = decoder_for(CompressedMessage.from_bytes(data), FACTORY).decompress(data)
    with torch.no_grad():
        return int((model(x).argmax(dim=1) != y).sum())


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1],
        lambda b: b[: len(b) // 2],
        lambda b: b[:10] + bytes([b[10] ^ 0x01]) + b[11:],
        lambda b: b + b"\x00",
    ],
    ids=["last-byte", "half", "bit-flip", "trailing"],
)
def test_damaged_artifact_is_refused(cert: Certificate, damage: object) -> None:
    x, y = _task()
    bad = damage(cert.hypothesis)  # type: ignore[operator]
    with pytest.raises(InvalidInputError, match=r"corrupted|truncated"):
        verify_artifact(bad, FACTORY, x, y, num_classes=2, options=CHECK)


def test_artifact_for_another_architecture_or_seed_is_refused(cert: Certificate) -> None:
    x, y = _task()
    data = cert.hypothesis
    with pytest.raises(InvalidInputError, match="another architecture"):
        verify_artifact(data, OTHER, x, y, num_classes=2, options=CHECK)
    with pytest.raises(InvalidInputError, match="made with seed 2"):
        certify_message(data, FACTORY, x, y, options=FAST, seed=3)


def test_bad_options_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="levels must be an integer in"):
        CompressionOptions(levels=1)
    with pytest.raises(InvalidInputError, match="levels must be an integer in"):
        CompressionOptions(levels=(4, 1))
    with pytest.raises(InvalidInputError, match="distinct"):
        CompressionOptions(d=(10, 10))
    with pytest.raises(InvalidInputError, match="method must be one of subspace, quantize"):
        CompressionOptions(method="prune")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="start must be one of zero, checkpoint"):
        CompressionOptions(start="middle")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"d=211 exceeds the number of parameters D=210"):
        _subspace(d=211)


def test_nondeterministic_factory_is_refused() -> None:
    x, y = _task()
    with pytest.raises(InvalidInputError, match="not deterministic in its seed"):
        certify_subspace(lambda seed: _build(), x, y, num_classes=2, options=FAST)


def test_huge_subspace_is_vacuous_not_an_error() -> None:
    cert = _subspace(d=210, levels=256, qat_steps=0)
    res = cert.results
    assert not cert.verdict.non_vacuous
    assert cert.value >= 0.5
    kl = bits_to_nats(res["code_length_bits"])
    assert cert.value == occam_binomial(res["errors"] / N, kl=kl, n=N, delta=0.05).value


def test_same_seed_same_certificate_and_seed_matters(cert: Certificate) -> None:
    again = _subspace()
    assert again.results == cert.results and again.hypothesis == cert.hypothesis
    other = _subspace(seed=3)
    assert other.hypothesis != cert.hypothesis


def test_checkpoint_start_uses_the_least_squares_projection() -> None:
    x, y = _task()
    checkpoint = FACTORY(7)
    opt = torch.optim.SGD(checkpoint.parameters(), lr=0.1)
    for _ in range(50):
        loss = nn.functional.cross_entropy(checkpoint(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    options = dataclasses.replace(FAST, d=200, levels=64, training=SubspaceRecipe(epochs=0))
    cert = certify_subspace(
        FACTORY, x, y, num_classes=2, options=options, checkpoint_model=checkpoint
    )
    errors = cert.results["errors"]
    assert cert.results["compression"]["start"] == "checkpoint-lstsq"
    assert errors == _decoded_errors(cert.hypothesis)
    # Near-full d, fine levels, no training: the decoded model behaves like the checkpoint.
    with torch.no_grad():
        checkpoint_errors = int((checkpoint(x).argmax(dim=1) != y).sum())
    assert abs(errors - checkpoint_errors) <= 0.05 * N
    with pytest.raises(InvalidInputError, match="architecture"):
        certify_subspace(FACTORY, x, y, num_classes=2, options=options, checkpoint_model=OTHER(0))


def test_post_hoc_quantization_certificate() -> None:
    x, y = _task()
    model = FACTORY(1)
    with torch.no_grad():  # prune half the weights: the zero level keeps them exactly zero
        for p in model.parameters():
            p.mul_((p.abs() > p.abs().median()).float())
    options = CompressionOptions(
        method="quantize",  # type: ignore[arg-type]
        levels=(4, 16),
        zero_level=True,
        qat_steps=5,
        qat_examples=200,
    )
    cert = certify_quantized(model, FACTORY, x, y, num_classes=2, options=options)
    data, res = cert.hypothesis, cert.results
    assert res["errors"] == _decoded_errors(data)
    assert 0.0 in _message(cert).codebook.values
    expected = occam_binomial(res["errors"] / N, kl=bits_to_nats(8 * len(data)), n=N, delta=0.05)
    assert cert.value == expected.value
    assert [c["levels"] for c in res["search"]] == [4, 4, 16, 16]  # shared, per-tensor
    assert res["compression"]["start"] == "checkpoint" and res["method"] == "quantize"
    again = certify_message(data, FACTORY, x, y, options=options, seed=None)
    assert _without(again.results, CHOICE) == _without(res, CHOICE)
    assert again.results["search"][0]["code_length_bits"] == res["code_length_bits"]
    with pytest.raises(InvalidInputError, match="does not have the architecture"):
        certify_quantized(OTHER(0), FACTORY, x, y, num_classes=2, options=options)

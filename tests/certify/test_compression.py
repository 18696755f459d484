"""The compression certification pipeline on a small synthetic task (fast, CPU)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch
from torch import nn

from pacbound.bounds import bits_to_nats, occam_binomial
from pacbound.certify.compression import (
    CompressionCertificate,
    CompressionOptions,
    SubspaceRecipe,
    certify_quantized,
    certify_subspace,
    compare_with_report,
    decoder_for,
    seeded_factory,
    verify_artifact,
)
from pacbound.compressors import CompressedMessage
from pacbound.errors import InvalidInputError

N = 600


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


def _subspace(**changes: Any) -> CompressionCertificate:
    x, y = _task()
    options = dataclasses.replace(FAST, **changes)
    return certify_subspace(FACTORY, x, y, num_classes=2, options=options)


@pytest.fixture(scope="module")
def cert() -> CompressionCertificate:
    return _subspace()


def _decoded_errors(message_bytes: bytes) -> int:
    x, y = _task()
    message = CompressedMessage.from_bytes(message_bytes)
    model = decoder_for(message, FACTORY).decompress(message_bytes)
    with torch.no_grad():
        return int((model(x).argmax(dim=1) != y).sum())


def test_certificate_is_the_occam_bound_of_the_decoded_model(cert: CompressionCertificate) -> None:
    data = cert.message.to_bytes()
    errors = _decoded_errors(data)
    assert cert.errors == errors and cert.n == N
    assert cert.code_length_bits == 8 * len(data) == sum(cert.breakdown.values())
    expected = occam_binomial(errors / N, kl=bits_to_nats(8 * len(data)), n=N, delta=0.05)
    assert cert.value == expected.value
    # Every predeclared (d, L) was tried; the reported one has the smallest bound.
    assert {(c.dimension, c.levels) for c in cert.search} == {(8, 3), (8, 8), (24, 3), (24, 8)}
    assert cert.value == min(c.bound for c in cert.search)
    assert (cert.message.dimension, cert.message.codebook.levels) in {
        (c.dimension, c.levels) for c in cert.search if c.bound == cert.value
    }
    assert cert.budget.spent == 0.05 and len(cert.budget.parts) == 1
    assert errors / N <= cert.value <= 1.0
    assert cert.verdict.non_vacuous == (cert.value < 0.5)


def test_report_is_json_and_names_the_decoded_model(cert: CompressionCertificate) -> None:
    report = json.loads(json.dumps(cert.to_dict(), allow_nan=False))
    assert report["certified_classifier"].startswith("the decoded compressed model")
    assert report["code_length_bits"] == cert.code_length_bits
    assert report["compression"]["seed"] == 2 and report["compression"]["start"] == "zero"
    assert report["options"]["d"] == [8, 24]


def test_verify_artifact_agrees_with_the_report(cert: CompressionCertificate) -> None:
    x, y = _task()
    checked = verify_artifact(cert.message.to_bytes(), FACTORY, x, y, num_classes=2, delta=0.05)
    assert checked.value == cert.value
    assert (checked.errors, checked.code_length_bits) == (cert.errors, cert.code_length_bits)
    assert compare_with_report(checked, cert.to_dict()) == []
    tampered = {**cert.to_dict(), "errors": cert.errors + 1}
    assert compare_with_report(checked, tampered) == [
        f"errors: report says {cert.errors + 1}, recomputed {cert.errors}"
    ]
    # On other data the recount differs and the comparison says so.
    other_x, other_y = _task(seed=5)
    elsewhere = verify_artifact(
        cert.message.to_bytes(), FACTORY, other_x, other_y, num_classes=2, delta=0.05
    )
    if elsewhere.errors != cert.errors:
        assert any(m.startswith("errors") for m in compare_with_report(elsewhere, cert.to_dict()))


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
def test_damaged_artifact_is_refused(cert: CompressionCertificate, damage: object) -> None:
    x, y = _task()
    bad = damage(cert.message.to_bytes())  # type: ignore[operator]
    with pytest.raises(InvalidInputError, match=r"corrupted|truncated"):
        verify_artifact(bad, FACTORY, x, y, num_classes=2, delta=0.05)


def test_artifact_for_another_architecture_or_seed_is_refused(
    cert: CompressionCertificate,
) -> None:
    x, y = _task()
    data = cert.message.to_bytes()
    with pytest.raises(InvalidInputError, match="another architecture"):
        verify_artifact(data, OTHER, x, y, num_classes=2, delta=0.05)
    with pytest.raises(InvalidInputError, match="made with seed 2"):
        verify_artifact(data, FACTORY, x, y, num_classes=2, delta=0.05, seed=3)


def test_bad_options_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="levels must be an integer in"):
        CompressionOptions(levels=1)
    with pytest.raises(InvalidInputError, match="levels must be an integer in"):
        CompressionOptions(levels=(4, 1))
    with pytest.raises(InvalidInputError, match="distinct"):
        CompressionOptions(d=(10, 10))
    with pytest.raises(InvalidInputError, match="method must be one of subspace, quantize"):
        CompressionOptions(method="prune")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"d=211 exceeds the number of parameters D=210"):
        _subspace(d=211)


def test_nondeterministic_factory_is_refused() -> None:
    x, y = _task()
    with pytest.raises(InvalidInputError, match="not deterministic in its seed"):
        certify_subspace(lambda seed: _build(), x, y, num_classes=2, options=FAST)


def test_huge_subspace_is_vacuous_not_an_error() -> None:
    cert = _subspace(d=210, levels=256, qat_steps=0)
    assert not cert.verdict.non_vacuous
    assert cert.value >= 0.5
    assert (
        cert.value
        == occam_binomial(
            cert.errors / N, kl=bits_to_nats(cert.code_length_bits), n=N, delta=0.05
        ).value
    )


def test_same_seed_same_certificate_and_seed_matters(cert: CompressionCertificate) -> None:
    again = _subspace()
    assert again.to_dict() == cert.to_dict()
    other = _subspace(seed=3)
    assert other.message.to_bytes() != cert.message.to_bytes()


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
    assert cert.start == "checkpoint-lstsq"
    assert cert.errors == _decoded_errors(cert.message.to_bytes())
    # Near-full d, fine levels, no training: the decoded model behaves like the checkpoint.
    with torch.no_grad():
        checkpoint_errors = int((checkpoint(x).argmax(dim=1) != y).sum())
    assert abs(cert.errors - checkpoint_errors) <= 0.05 * N
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
    data = cert.message.to_bytes()
    assert cert.errors == _decoded_errors(data)
    assert 0.0 in cert.message.codebook.values
    assert (
        cert.value
        == occam_binomial(cert.errors / N, kl=bits_to_nats(8 * len(data)), n=N, delta=0.05).value
    )
    assert [c.levels for c in cert.search] == [4, 16]
    checked = verify_artifact(data, FACTORY, x, y, num_classes=2, delta=0.05)
    assert compare_with_report(checked, cert.to_dict()) == []
    assert dataclasses.asdict(checked.search[0])["code_length_bits"] == cert.code_length_bits
    with pytest.raises(InvalidInputError, match="does not have the architecture"):
        certify_quantized(OTHER(0), FACTORY, x, y, num_classes=2, options=options)


def test_init_file_factory_fixes_theta0_and_hashes_content(tmp_path: Any) -> None:
    from safetensors.torch import save_file

    from pacbound.certify.compression import architecture_factory, theta0_sha256

    kwargs = {"in_features": 6, "hidden": [8], "num_classes": 2}
    torch.manual_seed(123)
    init = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    state = {k: v.detach().contiguous() for k, v in init.state_dict().items()}
    save_file(state, str(tmp_path / "init.safetensors"))
    torch.save(state, tmp_path / "init.pt")
    from_st = architecture_factory("mlp", kwargs, init=tmp_path / "init.safetensors")
    from_pt = architecture_factory("mlp", kwargs, init=tmp_path / "init.pt")
    seeded = architecture_factory("mlp", kwargs)
    for seed in (0, 7):
        model = from_st(seed)
        for name, value in model.state_dict().items():
            assert torch.equal(value, state[name])  # θ₀ is the file's, whatever the seed
    assert not torch.equal(seeded(0).state_dict()["1.weight"], state["1.weight"])
    assert from_st.init_sha256 == from_pt.init_sha256 == theta0_sha256(state)  # type: ignore[attr-defined]
    state["1.bias"] = state["1.bias"] + 1e-3
    assert theta0_sha256(state) != from_st.init_sha256  # type: ignore[attr-defined]

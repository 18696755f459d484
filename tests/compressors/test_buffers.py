"""Buffers in a compressed message (issue #13): floating-point ones coded compactly, integer
ones the factory does not rebuild coded exactly; models without buffers keep their format-1
bytes, and format-1 artifacts with float32 buffers still decode."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pacbound.certify.compressed_checkpoint import CheckpointSets, compare_predictions
from pacbound.certify.occam import certify_message
from pacbound.certify.occam_options import CompressionMethod, CompressionOptions, SubspaceRecipe
from pacbound.certify.quantize import choose_quantized
from pacbound.certify.subspace import certify_subspace
from pacbound.compressors import (
    CompressedMessage,
    DirectQuantizeCompressor,
    SubspaceQuantizeCompressor,
    dequantize,
    parameter_vector,
)
from pacbound.compressors.buffers import (
    PRECISION_BITS,
    BufferCode,
    Domain,
    FloatGroupCode,
    FloatScheme,
    code_float_group,
    decode_buffers,
    encode_buffers,
    float_groups,
    recalibrate_batchnorm,
)
from pacbound.compressors.coding import BitReader, BitWriter, delta_length
from pacbound.compressors.projectors import ProjectorKind
from pacbound.errors import InvalidInputError
from tests.compressors.models import _init, other_mlp, tiny_mlp, trained


def bn_cnn(seed: int) -> nn.Module:
    """Two conv + BatchNorm2d blocks on 1×8×8 images, 3 classes (D = 447)."""
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 10, 3, padding=1),
        nn.BatchNorm2d(10),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(10, 3),
    )
    return _init(model, seed)


def _images(n: int, seed: int) -> Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) + 0.5


def trained_bn_cnn(seed: int = 0) -> nn.Module:
    """A bn_cnn moved off its init, with running statistics from train-mode passes."""
    model = bn_cnn(seed)
    generator = torch.Generator().manual_seed(500 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
        model.train()
        for batch in range(5):
            model(_images(64, batch))
    return model.eval()


def _legacy_bits(model: nn.Module) -> int:
    """The buffers part of a format-1 message: every float buffer value as float32."""
    raw = torch.cat([b.reshape(-1) for b in model.buffers() if b.is_floating_point()])
    w = BitWriter()
    BufferCode(legacy=raw.numpy().astype(np.float32)).write(w)
    return len(w)


def _bits(code: BufferCode) -> int:
    w = BitWriter()
    code.write(w)
    return len(w)


def test_bn_cnn_quantize_certificate_codes_the_statistics_in_a_fraction_of_32_bits() -> None:
    """The buffers part is < 1/2 of the float32 coding; the statistics coded are those of the
    quantized weights (re-estimated on the sample), within the precision; errors are counted
    on the decoded model, and its disagreement with the checkpoint is reported."""
    model = trained_bn_cnn()
    x = _images(200, 99)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    values = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert values == 32  # running mean and variance of 6 + 10 channels
    before = _legacy_bits(model)
    assert before == 32 * values + delta_length(values + 1)
    options = CompressionOptions(method=CompressionMethod.QUANTIZE, levels=8)
    payload, choice = choose_quantized(model, bn_cnn, x, y, options=options)
    cert = certify_message(
        payload,
        bn_cnn,
        x,
        y,
        options=options,
        seed=None,
        choice=choice,
        checkpoint=CheckpointSets(model),
    )
    res = cert.results
    after = res["code_length_breakdown"]["buffers"]
    assert 2 * after < before, (after, before)  # measured: 408 vs 1034 bits (p = 8)
    assert sum(res["code_length_breakdown"].values()) == res["code_length_bits"]
    decoded = DirectQuantizeCompressor(bn_cnn, levels=2).decompress(payload)
    with torch.no_grad():
        decoded_errors = int((decoded(x).argmax(dim=1) != y).sum())
    assert res["errors"] == decoded_errors
    agreement = compare_predictions(model, decoded, x, y)
    training = res["checkpoint_on_training"]
    assert training["disagreements_with_decoded"] == agreement.disagreements == decoded_errors
    # The statistics: the decoded weights' own, re-estimated on the sample (one batch of
    # 200, so the order of the seeded subset does not matter), coded within the precision.
    expected = bn_cnn(0)
    expected.load_state_dict({**model.state_dict(), **dict(decoded.named_parameters())})
    assert recalibrate_batchnorm(expected, x, batch_size=options.batch_size) == 2
    assert 0 < max(_bn_errors(expected, decoded)) <= 2.0**-PRECISION_BITS
    assert max(_bn_errors(model, decoded)) > 2.0**-PRECISION_BITS  # not the checkpoint's


def test_bn_cnn_subspace_certificate_codes_the_statistics_compactly() -> None:
    model = trained_bn_cnn()
    x = _images(200, 99)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    before = _legacy_bits(model)
    sub = CompressionOptions(
        d=40,
        levels=8,
        projector=ProjectorKind.DENSE,
        training=SubspaceRecipe(epochs=1, lr=0.05, batch_size=200),
        seed=1,
    )
    sub_cert = certify_subspace(bn_cnn, x, y, num_classes=3, options=sub)
    sub_parts = sub_cert.results["code_length_breakdown"]
    assert 3 * sub_parts["buffers"] < before
    message = CompressedMessage.from_bytes(sub_cert.hypothesis)
    assert [g.scheme for g in message.buffers.floats] == [FloatScheme.FIXED] * 2


def _bn_errors(model: nn.Module, decoded: nn.Module) -> tuple[float, float]:
    """Over the BatchNorm layers: the largest |m̂ − m| / √(v̂ + ε) and |log₂(v̂ / v)|."""
    mean_error = var_error = 0.0
    for (_, bn), (_, out) in zip(model.named_modules(), decoded.named_modules(), strict=True):
        if isinstance(bn, nn.BatchNorm2d):
            assert isinstance(out, nn.BatchNorm2d)
            assert bn.running_var is not None and out.running_var is not None
            assert bn.running_mean is not None and out.running_mean is not None
            std = torch.sqrt(out.running_var.double() + bn.eps)
            diff = (out.running_mean.double() - bn.running_mean.double()).abs() / std
            ratio = (out.running_var.double() / bn.running_var.double()).log2().abs()
            mean_error = max(mean_error, float(diff.max()))
            var_error = max(var_error, float(ratio.max()))
    return mean_error, var_error


def test_float_groups_meet_the_precision_target() -> None:
    """Variances within 2^-p in log₂; BatchNorm means within 2^-p of their channel's decoded
    standard deviation (the scale their error matters on), not of the largest mean."""
    model = trained_bn_cnn()
    groups = float_groups(model)
    assert [[name for name, _ in g] for g in groups] == [
        ["1.running_mean", "5.running_mean"],
        ["1.running_var", "5.running_var"],
    ]
    code = encode_buffers(model, bn_cnn(0))
    assert [g.domain for g in code.floats] == [Domain.STANDARD, Domain.LOG2]
    decoded = bn_cnn(0)
    decode_buffers(decoded, code)
    mean_error, var_error = _bn_errors(model, decoded)
    assert 0 < mean_error <= 2.0**-PRECISION_BITS and 0 < var_error <= 2.0**-PRECISION_BITS
    clustered = np.repeat([0.5, 2.0, 7.0], 100)  # three values: the codebook is shortest
    book = code_float_group(clustered)
    assert book.scheme is FloatScheme.CODEBOOK
    np.testing.assert_allclose(book.values(), clustered, rtol=1e-6)
    single = code_float_group(np.array([0.1234]))  # one value: the step, the offset, no bits
    assert single.scheme is FloatScheme.FIXED and single.width == 0
    assert abs(np.log2(single.values()[0] / 0.1234)) <= 2.0**-PRECISION_BITS
    infinite = code_float_group(np.array([1.5, np.inf, -2.0]))  # only float32 holds inf
    assert infinite.scheme is FloatScheme.RAW
    np.testing.assert_array_equal(infinite.values(), [1.5, np.inf, -2.0])


class Table(nn.Module):
    """A Linear plus integer and boolean buffers that change the output."""

    table: Tensor
    mask: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.register_buffer("table", torch.zeros(5, dtype=torch.int64))
        self.register_buffer("mask", torch.ones(3, dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        return (self.linear(x) + self.table[:3].float() * 1e-3) * self.mask.float()


def table(seed: int) -> Table:
    model = Table()
    _init(model, seed)
    return model


def test_integer_buffers_are_free_when_the_factorys_and_exact_otherwise() -> None:
    compressor = DirectQuantizeCompressor(table, levels=4)
    plain = table(0)
    message = compressor.compress(plain)
    assert message.buffers.format_version == 1 and message.breakdown()["buffers"] == 1
    stored = table(0)
    stored.table.copy_(torch.tensor([-7, 0, 3, 2**40, -(2**50)]))
    stored.mask.copy_(torch.tensor([True, False, True]))
    coded = compressor.compress(stored)
    parsed = CompressedMessage.from_bytes(coded.to_bytes())
    assert parsed.buffers.format_version == 2
    decoded = compressor.decompress(parsed.to_bytes())
    assert torch.equal(decoded.table, stored.table)  # type: ignore[arg-type]
    assert torch.equal(decoded.mask, stored.mask)  # type: ignore[arg-type]
    assert decoded.table.dtype == torch.int64 and decoded.mask.dtype == torch.bool
    # Paid: more than the 5 + 3 values' magnitudes (2^50 alone takes > 50 bits).
    assert coded.breakdown()["buffers"] > 50 + 40 + 8
    only_mask = table(0)
    only_mask.mask.copy_(torch.tensor([True, False, True]))
    code = encode_buffers(only_mask, table(0))
    assert code.integers[0] is None and code.integers[1] is not None
    assert BufferCode.read(BitReader(_bits_of(code)), 2).integers[0] is None


def test_float_buffers_equal_to_the_factorys_cost_one_bit_each() -> None:
    compressor = DirectQuantizeCompressor(tiny_mlp, levels=4, seed=3)
    untouched = compressor.compress(tiny_mlp(3))  # statistics as built: nothing to code
    assert untouched.buffers.format_version == 1 and untouched.breakdown()["buffers"] == 1
    decoded = compressor.decompress(untouched.to_bytes())
    assert torch.equal(decoded[1].running_var, torch.ones(8))  # type: ignore[index]
    half = tiny_mlp(3)
    half[1].running_var.mul_(3.0)  # type: ignore[index]
    code = compressor.compress(half).buffers
    assert code.format_version == 2 and code.coded == (False, True)
    assert [g.symbols.size for g in code.floats] == [8]
    back = compressor.decompress(compressor.compress(half).to_bytes())
    assert torch.equal(back[1].running_mean, torch.zeros(8))  # type: ignore[index]
    ratio = back[1].running_var / 3.0  # type: ignore[index]
    assert float(ratio.log2().abs().max()) <= 2.0**-PRECISION_BITS


def _bits_of(code: BufferCode) -> list[int]:
    w = BitWriter()
    code.write(w)
    return list(BitReader.from_bytes(w.to_bytes()).bits[: len(w)])


#: sha256 of messages made by pacbound before issue #13 (format 1) for models without buffers.
FORMAT_1 = {
    "direct": "c28927a48ce70d91",
    "subspace": "f9dcac80d773cba9",
}


def test_models_without_float_buffers_keep_their_format_1_bytes() -> None:
    model = other_mlp(3)
    generator = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    for name, compressor in (
        ("direct", DirectQuantizeCompressor(other_mlp, levels=4, seed=3)),
        ("subspace", SubspaceQuantizeCompressor(other_mlp, d=12, levels=8, seed=3)),
    ):
        data = compressor.compress(model).to_bytes()
        assert hashlib.sha256(data).hexdigest()[:16] == FORMAT_1[name]


#: A format-1 direct message (levels=2, seed 3) of tests.compressors.models.trained(3),
#: written by pacbound before issue #13: its 16 BatchNorm statistics as raw float32.
LEGACY = bytes.fromhex(
    "5042434da137a5d7a3c68af9740374f8e7212ca37e40f5ed7f0aa6287d2900ea7e6627b77f9769de7f3464d4"
    "7ecc98a87ec7e4807f0142107ec295c27e351ef67f067d4c7e171a947e8b9e187f4194ec7e3fc82e792a72a6"
    "b408270314dd57900d6c438e32c1"
)


def test_format_1_artifacts_with_float32_buffers_still_decode_exactly() -> None:
    message = CompressedMessage.from_bytes(LEGACY)
    assert message.buffers.format_version == 1 and message.to_bytes() == LEGACY
    assert message.code_length_bits == 816
    decoded = DirectQuantizeCompressor(tiny_mlp, levels=2, seed=3).decompress(LEGACY)
    original = trained(3)
    for name, buf in original.named_buffers():
        if buf.is_floating_point():
            assert torch.equal(dict(decoded.named_buffers())[name], buf), name
    expected = dequantize(message.symbols, message.codebook)
    np.testing.assert_array_equal(parameter_vector(decoded).double().numpy(), expected)
    new = DirectQuantizeCompressor(tiny_mlp, levels=2, seed=3).compress(original)
    assert new.buffers.format_version == 2 and new.code_length_bits < 816 - 250


def test_forged_buffer_codes_are_refused_not_decoded() -> None:
    """A message with a valid CRC but an impossible buffers part: InvalidInputError."""
    compressor = DirectQuantizeCompressor(table, levels=4)
    good = compressor.compress(table(0))

    def forged(code: BufferCode) -> bytes:
        return CompressedMessage(
            good.kind, good.architecture, good.num_parameters, good.codebook, good.symbols, code
        ).to_bytes()

    huge = FloatGroupCode(FloatScheme.FIXED, Domain.LINEAR, np.zeros(1, np.int64), exponent=5000)
    with pytest.raises(InvalidInputError, match="corrupted"):
        CompressedMessage.from_bytes(forged(BufferCode((None, None), (), (huge,))))
    # A standardized group where the architecture has no BatchNorm to scale it.
    std = FloatGroupCode(FloatScheme.FIXED, Domain.STANDARD, np.zeros(2, np.int64), exponent=-3)
    mlp = DirectQuantizeCompressor(tiny_mlp, levels=4)
    message = mlp.compress(trained(3))
    bad = CompressedMessage(
        message.kind,
        message.architecture,
        message.num_parameters,
        message.codebook,
        message.symbols,
        BufferCode((), (False, True), (std,)),  # running_var (8 values) coded as 2
    )
    with pytest.raises(InvalidInputError, match="do not fit"):
        mlp.decompress(bad.to_bytes())
    with pytest.raises(InvalidInputError, match="complex"):
        holder = table(0)
        holder.register_buffer("phase", torch.zeros(2, dtype=torch.complex64))
        encode_buffers(holder, table(0))

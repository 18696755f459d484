"""One contract over every compressor: exact round trip, complete code length, determinism,
and refusal of truncated, corrupted or mismatched artifacts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from pacbound.compressors import (
    Codebook,
    CompressedMessage,
    Compressor,
    DirectQuantizeCompressor,
    SubspaceQuantizeCompressor,
    dequantize,
    parameter_vector,
)
from pacbound.compressors.buffers import PRECISION_BITS
from pacbound.compressors.codebooks import TensorCodebooks
from pacbound.compressors.coding import arithmetic_encode, delta_length, gamma_length
from pacbound.errors import InvalidInputError
from tests.compressors.models import other_mlp, tiny_mlp, trained

MAKERS: dict[str, Callable[..., Compressor]] = {
    "subspace-kronecker": lambda factory=tiny_mlp, seed=3: SubspaceQuantizeCompressor(
        factory, d=20, levels=8, projector="kronecker", seed=seed
    ),
    "subspace-dense-f16": lambda factory=tiny_mlp, seed=3: SubspaceQuantizeCompressor(
        factory,
        d=30,
        levels=4,
        projector="dense",
        codebook="uniform",
        precision="float16",
        seed=seed,
    ),
    "subspace-sparse": lambda factory=tiny_mlp, seed=3: SubspaceQuantizeCompressor(
        factory, d=12, levels=16, projector="sparse", seed=seed
    ),
    "direct-kmeans": lambda factory=tiny_mlp, seed=3: DirectQuantizeCompressor(
        factory, levels=8, seed=seed
    ),
    "direct-uniform-zero": lambda factory=tiny_mlp, seed=3: DirectQuantizeCompressor(
        factory, levels=5, codebook="uniform", zero_level=True, seed=seed
    ),
    "direct-per-tensor": lambda factory=tiny_mlp, seed=3: DirectQuantizeCompressor(
        factory, levels=6, scope="tensor", seed=seed
    ),
    "direct-per-tensor-f16-zero": lambda factory=tiny_mlp, seed=3: DirectQuantizeCompressor(
        factory, levels=3, scope="tensor", precision="float16", zero_level=True, seed=seed
    ),
}


def _codebook(message: CompressedMessage, model: nn.Module) -> Codebook | TensorCodebooks:
    """What the decoder dequantizes with: the shared codebook, or one per parameter tensor."""
    if not message.tensor_codebooks:
        return message.codebook
    return TensorCodebooks(message.tensor_codebooks, tuple(p.numel() for p in model.parameters()))


@pytest.fixture(params=sorted(MAKERS))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip_is_exact(name: str) -> None:
    compressor = MAKERS[name]()
    message = compressor.compress(trained(3))
    data = message.to_bytes()
    parsed = CompressedMessage.from_bytes(data)
    assert parsed == message
    np.testing.assert_array_equal(parsed.symbols, message.symbols)
    assert parsed.codebooks == message.codebooks
    decoded = compressor.decompress(data)
    _assert_same_state(decoded, compressor.decompress(message))
    bn, out = trained(3)[1], decoded[1]  # type: ignore[index]
    assert isinstance(bn, nn.BatchNorm1d) and isinstance(out, nn.BatchNorm1d)
    assert bn.running_mean is not None and bn.running_var is not None
    assert out.running_mean is not None and out.running_var is not None
    std = torch.sqrt(out.running_var + bn.eps)
    mean_error = ((out.running_mean - bn.running_mean).abs() / std).max()
    assert 0 < mean_error <= 2.0**-PRECISION_BITS  # lossy, within the precision target
    ratio = out.running_var / bn.running_var
    assert float(ratio.log2().abs().max()) <= 2.0**-PRECISION_BITS
    if isinstance(compressor, DirectQuantizeCompressor):
        expected = dequantize(message.symbols, _codebook(message, decoded))
        np.testing.assert_array_equal(parameter_vector(decoded).double().numpy(), expected)


def test_code_length_counts_every_part(name: str) -> None:
    message = MAKERS[name]().compress(trained(3))
    parts = message.breakdown()
    assert message.code_length_bits == 8 * len(message.to_bytes()) == sum(parts.values())
    book, count = message.codebook, len(message.codebooks)
    symbol_bits = len(arithmetic_encode(message.symbols, book.levels))
    assert parts["codebook"] == count * book.levels * book.precision.bits
    assert parts["symbols"] == symbol_bits
    assert 0 < parts["buffers"] < 16 * 16  # 16 float values (mean, var): < 16 bits each
    hyper = delta_length(book.levels) + (delta_length(count) if count > 1 else 0)
    if message.seed is not None:
        hyper += gamma_length(message.seed + 1) + delta_length(message.dimension)
    assert parts["hyperparameters"] >= hyper
    magic_fingerprint_crc = 3 * 32
    floor = count * book.bits + symbol_bits + hyper + delta_length(message.num_parameters)
    floor += magic_fingerprint_crc
    assert message.code_length_bits >= floor + delta_length(symbol_bits)


def test_deterministic_for_a_seed(name: str) -> None:
    a = MAKERS[name]().compress(trained(3)).to_bytes()
    b = MAKERS[name]().compress(trained(3)).to_bytes()
    assert a == b
    _assert_same_state(MAKERS[name]().decompress(a), MAKERS[name]().decompress(b))


def test_truncated_or_corrupted_bytes_are_refused(name: str) -> None:
    data = MAKERS[name]().compress(trained(3)).to_bytes()
    for cut in (0, 3, 8, len(data) // 2, len(data) - 1):
        with pytest.raises(InvalidInputError, match=r"truncated|corrupted"):
            CompressedMessage.from_bytes(data[:cut])
    with pytest.raises(InvalidInputError, match="corrupted"):
        CompressedMessage.from_bytes(data + b"\x00")
    for position in range(len(data)):
        for bit in (0, 5):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            with pytest.raises(InvalidInputError):
                MAKERS[name]().decompress(bytes(flipped))


def test_another_architecture_is_refused(name: str) -> None:
    data = MAKERS[name]().compress(trained(3)).to_bytes()
    with pytest.raises(InvalidInputError, match="another architecture"):
        MAKERS[name](factory=other_mlp).decompress(data)
    with pytest.raises(InvalidInputError, match="architecture"):
        MAKERS[name]().compress(other_mlp(3))


def test_another_seed_is_refused_when_decoding_depends_on_it(name: str) -> None:
    compressor = MAKERS[name]()
    data = compressor.compress(trained(3)).to_bytes()
    if not compressor.uses_seed:
        _assert_same_state(MAKERS[name](seed=4).decompress(data), compressor.decompress(data))
        return
    with pytest.raises(InvalidInputError, match="seed 3"):
        MAKERS[name](seed=4).decompress(data)


def test_a_message_of_the_other_kind_is_refused() -> None:
    data = MAKERS["direct-kmeans"]().compress(trained(3)).to_bytes()
    with pytest.raises(InvalidInputError, match="'direct' compressor"):
        MAKERS["subspace-kronecker"]().decompress(data)


def test_levels_below_two_and_d_above_D_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="levels"):
        DirectQuantizeCompressor(tiny_mlp, levels=1)
    too_big = SubspaceQuantizeCompressor(tiny_mlp, d=100, levels=4)  # D = 99
    with pytest.raises(InvalidInputError, match="d=100 exceeds"):
        too_big.compress(trained(3))

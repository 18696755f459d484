"""Per-tensor codebooks (message format 3) and BatchNorm re-estimation after quantization: a
model whose tensors have very different scales (a stem convolution, BatchNorm's γ ≈ 1, small
3×3 kernels) keeps its predictions when each tensor has its own levels and the statistics are
those of the quantized weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pacbound.certify.occam_options import CompressionMethod, CompressionOptions
from pacbound.certify.quantize import choose_quantized
from pacbound.compressors import (
    Codebook,
    CompressedMessage,
    DirectQuantizeCompressor,
    dequantize,
    parameter_vector,
    quantize,
)
from pacbound.compressors.buffers import recalibrate_batchnorm
from pacbound.compressors.codebooks import TensorCodebooks, straight_through
from pacbound.compressors.message import FORMAT_VERSIONS
from pacbound.errors import InvalidInputError
from tests.compressors.models import trained
from tests.compressors.test_buffers import _images, bn_cnn


def scaled_bn_cnn(seed: int) -> nn.Module:
    """bn_cnn with a first convolution 20× larger than the second, as after training a stem
    on raw pixels, and running statistics from train-mode passes (the checkpoint's)."""
    model = bn_cnn(seed)
    with torch.no_grad():
        model[0].weight.mul_(20.0)  # type: ignore[index]
        model[4].weight.mul_(0.2)  # type: ignore[index]
        model.train()
        for batch in range(4):
            model(_images(100, 50 + batch))
    return model.eval()


def test_per_tensor_codebooks_are_fitted_to_each_tensor_and_written_as_format_3() -> None:
    model = trained(3)
    coder = DirectQuantizeCompressor(lambda s: trained(s), levels=4, scope="tensor")
    message = coder.compress(model)
    sizes = tuple(p.numel() for p in model.parameters())
    assert len(message.tensor_codebooks) == len(sizes) == 6
    assert message.format_version == 3 and 3 in FORMAT_VERSIONS
    assert message.codebook == message.tensor_codebooks[0]
    decoded = parameter_vector(coder.decompress(message.to_bytes())).double().numpy()
    theta, start = parameter_vector(model).double().numpy(), 0
    for book, size in zip(message.tensor_codebooks, sizes, strict=True):
        part = slice(start, start + size)
        assert set(decoded[part].tolist()) <= set(book.values)
        assert book.values[0] >= theta[part].min() - 1e-6  # k-means levels inside the range
        assert book.values[-1] <= theta[part].max() + 1e-6
        start += size
    shared = DirectQuantizeCompressor(lambda s: trained(s), levels=4).compress(model)
    assert shared.format_version == 2 and shared.tensor_codebooks == ()
    shared_error = np.abs(dequantize(shared.symbols, shared.codebook) - theta).max()
    assert np.abs(decoded - theta).max() < shared_error


def test_a_one_tensor_model_gets_the_shared_form() -> None:
    def linear(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Linear(5, 1, bias=False)

    message = DirectQuantizeCompressor(linear, levels=3, scope="tensor").compress(linear(1))
    assert message.tensor_codebooks == () and message.format_version == 1


def test_forged_per_tensor_headers_are_refused() -> None:
    good = DirectQuantizeCompressor(lambda s: trained(s), levels=4, scope="tensor").compress(
        trained(3)
    )
    books = good.tensor_codebooks

    def forged(codebooks: tuple[Codebook, ...]) -> CompressedMessage:
        return CompressedMessage(
            good.kind,
            good.architecture,
            good.num_parameters,
            codebooks[0],
            good.symbols,
            good.buffers,
            tensor_codebooks=codebooks,
        )

    wrong_count = forged(books[:2])  # 2 codebooks for an architecture with 6 tensors
    coder = DirectQuantizeCompressor(lambda s: trained(s), levels=4)
    with pytest.raises(InvalidInputError, match=r"2 per-tensor codebooks .* 6 parameter"):
        coder.decompress(wrong_count.to_bytes())
    with pytest.raises(InvalidInputError, match="≥ 2 tensors"):
        forged(books[:1])
    other = Codebook.from_floats(np.linspace(-1, 1, 5), books[0].precision)
    with pytest.raises(InvalidInputError, match="share L"):
        forged((books[0], other))


def test_tensor_codebooks_validate_and_quantize_piecewise() -> None:
    one, two = Codebook((0.0, 1.0)), Codebook((-10.0, 10.0))
    books = TensorCodebooks((one, two), (2, 3))
    values = np.array([0.4, 0.6, -3.0, 2.0, 9.0])
    symbols = quantize(values, books)
    assert symbols.tolist() == [0, 1, 0, 1, 1]
    assert dequantize(symbols, books).tolist() == [0.0, 1.0, -10.0, 10.0, 10.0]
    w = torch.tensor(values, requires_grad=True)
    rounded = straight_through(w, books)
    rounded.sum().backward()
    assert rounded.tolist() == [0.0, 1.0, -10.0, 10.0, 10.0]
    assert w.grad is not None and w.grad.tolist() == [1.0] * 5  # straight-through
    with pytest.raises(InvalidInputError, match="cover 5 values, not 4"):
        quantize(values[:4], books)
    with pytest.raises(InvalidInputError, match="one codebook per tensor"):
        TensorCodebooks((one,), (2, 3))
    with pytest.raises(InvalidInputError, match="share L"):
        TensorCodebooks((one, Codebook((0.0, 1.0, 2.0))), (2, 3))


def _batch_statistics(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The first BatchNorm's input mean and unbiased variance over x (per channel)."""
    with torch.no_grad():
        h = model[0](x)  # type: ignore[index]
    dims = [0, 2, 3]
    return h.mean(dims), h.var(dims, unbiased=True)


def test_recalibration_gives_the_statistics_of_the_model_as_it_is() -> None:
    model = scaled_bn_cnn(0)
    model[1].momentum = 0.3  # type: ignore[index]
    x = _images(128, 7)
    assert recalibrate_batchnorm(model, x, batch_size=128) == 2
    bn = model[1]  # type: ignore[index]
    mean, var = _batch_statistics(model, x)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-5)
    assert not model.training and not bn.training and bn.momentum == 0.3  # restored
    # equal-size batches averaged with equal weight; a last partial batch is dropped
    again = scaled_bn_cnn(0)
    recalibrate_batchnorm(again, torch.cat([x, _images(10, 8)]), batch_size=64)
    halves = [_batch_statistics(again, x[i : i + 64])[0] for i in (0, 64)]
    torch.testing.assert_close(again[1].running_mean, (halves[0] + halves[1]) / 2)  # type: ignore[index]


def test_recalibration_leaves_models_without_batchnorm_and_dropout_alone() -> None:
    plain = nn.Sequential(nn.Linear(4, 3))
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    assert recalibrate_batchnorm(plain, torch.randn(8, 4), batch_size=4) == 0
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    torch.manual_seed(0)
    dropout = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.BatchNorm1d(6)).eval()
    x = torch.randn(32, 4)
    recalibrate_batchnorm(dropout, x, batch_size=32)
    first = dropout[2].running_mean.clone()  # type: ignore[index]
    recalibrate_batchnorm(dropout, x, batch_size=32)
    assert torch.equal(first, dropout[2].running_mean)  # type: ignore[index]  # dropout off


def test_quantize_search_has_a_per_tensor_candidate_that_keeps_the_predictions() -> None:
    """Shared codebook: the small second convolution collapses onto few levels; per tensor
    (with re-estimated statistics) the decoded model agrees with the checkpoint."""
    model = scaled_bn_cnn(1)
    x = _images(300, 99)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    options = CompressionOptions(method=CompressionMethod.QUANTIZE, levels=4)
    payload, choice = choose_quantized(model, scaled_bn_cnn, x, y, options=options)
    shared, per_tensor = choice.search
    assert shared.levels == per_tensor.levels == 4
    assert per_tensor.code_length_bits > shared.code_length_bits  # 8 codebooks, not 1
    assert per_tensor.errors < shared.errors
    assert per_tensor.errors <= 0.05 * len(x), (shared.errors, per_tensor.errors)
    chosen = CompressedMessage.from_bytes(payload)
    assert chosen.code_length_bits in {shared.code_length_bits, per_tensor.code_length_bits}

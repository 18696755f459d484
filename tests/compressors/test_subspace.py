"""Subspace training on a tiny synthetic problem, least-squares init, and the full pipeline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pacbound.compressors import (
    SubspaceModel,
    SubspaceQuantizeCompressor,
    dequantize,
    init_from_checkpoint_lstsq,
    make_projector,
    parameter_vector,
    train_subspace,
)
from pacbound.errors import InvalidInputError


def mlp(seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))  # D = 130
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=generator))
    return model


def data(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(n, 5, generator=generator)
    return x, (x[:, 0] - 0.5 * x[:, 1] > 0).long()


def test_training_the_subspace_vector_lowers_the_loss() -> None:
    x, y = data()
    model = mlp(0)
    projector = make_projector("kronecker", D=130, d=24, seed=0)
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    w = train_subspace(model, projector, x, y, epochs=20, lr=3e-2, seed=0)
    with torch.no_grad():
        after = float(F.cross_entropy(SubspaceModel(model, projector, w)(x), y))
    assert w.shape == (24,)
    assert after < 0.5 * before
    again = train_subspace(model, projector, x, y, epochs=20, lr=3e-2, seed=0)
    assert torch.equal(w, again)


def test_at_w_zero_the_subspace_model_is_the_module() -> None:
    x, _ = data(20)
    model = mlp(1)
    subspace = SubspaceModel(model, make_projector("dense", D=130, d=7, seed=0))
    assert torch.equal(subspace(x), model(x))
    assert [n for n, _ in subspace.named_parameters()] == ["w"] + [
        f"module.{n}" for n, _ in model.named_parameters()
    ]


def test_d_above_D_and_a_wrong_projector_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="d=131 exceeds the number of parameters D=130"):
        make_projector("kronecker", D=130, d=131, seed=0)
    with pytest.raises(InvalidInputError, match="D=129 parameters but the model has 130"):
        SubspaceModel(mlp(0), make_projector("kronecker", D=129, d=5, seed=0))
    x, y = data(10)
    with pytest.raises(InvalidInputError, match="optimizer must be one of adam, sgd"):
        train_subspace(mlp(0), make_projector("dense", D=130, d=5, seed=0), x, y, optimizer="lbfgs")


@pytest.mark.parametrize("kind", ["dense", "kronecker", "sparse"])
def test_least_squares_init_matches_a_dense_solver(kind: str) -> None:
    projector = make_projector(kind, D=400, d=30, seed=4)
    delta = torch.randn(400, generator=torch.Generator().manual_seed(2))
    w = init_from_checkpoint_lstsq(delta, projector)
    dense = projector.materialize().double()
    expected = torch.linalg.lstsq(dense, delta.double().unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(w.double(), expected, atol=1e-4, rtol=1e-4)


def test_pipeline_train_compress_decode_gives_the_quantized_subspace_model() -> None:
    x, y = data()
    compressor = SubspaceQuantizeCompressor(mlp, d=24, levels=16, seed=0)
    start = compressor.subspace_model()
    w = train_subspace(start.module, start.projector, x, y, epochs=20, lr=3e-2, seed=0)
    message = compressor.compress(SubspaceModel(compressor.build(), start.projector, w))
    decoded = compressor.decompress(message.to_bytes())
    w_hat = torch.from_numpy(dequantize(message.symbols, message.codebook)).float()
    expected = SubspaceModel(compressor.build(), start.projector, w_hat)
    assert torch.equal(parameter_vector(decoded), expected.theta().detach())
    with torch.no_grad():
        accuracy = float((decoded(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9
    assert message.code_length_bits < 24 * 4 + 16 * 32 + 200


def test_cosine_schedule_is_deterministic_and_differs_from_constant() -> None:
    x, y = data(64)
    projector = make_projector("kronecker", D=130, d=24, seed=0)
    runs = {
        schedule: train_subspace(
            mlp(0), projector, x, y, epochs=5, lr=3e-2, batch_size=64, lr_schedule=schedule
        )
        for schedule in ("constant", "cosine")
    }
    assert not torch.equal(runs["constant"], runs["cosine"])
    again = train_subspace(
        mlp(0), projector, x, y, epochs=5, lr=3e-2, batch_size=64, lr_schedule="cosine"
    )
    assert torch.equal(runs["cosine"], again)
    with pytest.raises(InvalidInputError, match="unknown subspace learning-rate schedule"):
        train_subspace(mlp(0), projector, x, y, epochs=1, lr_schedule="step")

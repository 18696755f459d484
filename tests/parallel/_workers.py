"""What each rank of a real process group runs in the sharding and training tests
(module-level functions: they are pickled into the spawned ranks)."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.certify.compressed_checkpoint import compare_predictions
from pacbound.certify.occam_options import CompressionOptions
from pacbound.certify.qat import finetune, qat_loss
from pacbound.compressors import make_projector, train_subspace, uniform_codebook
from pacbound.errors import PacboundError
from pacbound.parallel import current
from pacbound.posterior.fit import TrainingRecipe, train_diagonal_posterior
from pacbound.posterior.network import build_stochastic_network
from pacbound.posterior.priors import PriorTrainingRecipe, train_prior_mean
from pacbound.posterior.risk import count_errors
from tests.parallel._spawn import run_ranks

#: The data and batches of the real-group checks: the last training batch has 2 examples,
#: so at world size 3 one rank has an empty share of it.
N, BATCH_SIZES, NAN_ROW = 230, (7, 64, 1000), 150
TRAIN_N, TRAIN_BATCH = 202, 50


def data(n: int, seed: int = 5) -> tuple[Tensor, Tensor]:
    """n seeded 1×6×6 images with 3 classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x[:, 0, 2, 2] + x[:, 0, 3, 3] > 0).long() + (x[:, 0, 1, 1] > 1).long()
    return x, y


def convnet(seed: int, *, batch_norm: bool = False) -> nn.Module:
    """A small seeded convolutional classifier (optionally with BatchNorm)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)]
    return nn.Sequential(*layers)


class Recording:
    """Tensor-like features that record which rows were read (like a streamed data set)."""

    def __init__(self, x: Tensor) -> None:
        self.x, self.read = x, set()
        self.shape, self.device = x.shape, x.device

    def __getitem__(self, key: slice) -> Tensor:
        rows = range(*key.indices(int(self.shape[0])))
        self.read.update(rows)
        return self.x[key]


def counting(n: int, batch_sizes: tuple[int, ...], nan_row: int) -> dict[str, Any]:
    """Error counts, agreement counts and the rows read on this rank; a NaN on one row."""
    x, y = data(n)
    model, other = convnet(1).eval(), convnet(2).eval()
    out: dict[str, Any] = {"rank": current().rank}
    for b in batch_sizes:
        recorded = Recording(x)
        c = count_errors(model, recorded, y, batch_size=b)  # type: ignore[arg-type]
        a = compare_predictions(model, other, x, y, batch_size=b)
        out[b] = (c.errors, c.evaluations, sorted(recorded.read), a.n, a.disagreements, a.errors)
    poisoned = x.clone()
    poisoned[nan_row, 0, 0, 0] = math.nan  # NaN outputs for this one example
    try:
        count_errors(model, poisoned, y, batch_size=batch_sizes[0])
        out["nan"] = None
    except PacboundError as exc:
        out["nan"] = (type(exc).__name__, exc.exit_code, str(exc))
    return out


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def prior(n: int, batch_size: int, batch_norm: bool) -> dict[str, Tensor]:
    x, y = data(n)
    model = convnet(3, batch_norm=batch_norm)
    recipe = PriorTrainingRecipe(
        epochs=2, lr=0.05, batch_size=batch_size, augment_shift=1, lr_schedule="cosine", seed=4
    )
    return _state(train_prior_mean(model, x, y, recipe, device=torch.device("cpu")))


def subspace(n: int, batch_size: int, batch_norm: bool, optimizer: str) -> dict[str, Tensor]:
    x, y = data(n)
    model = convnet(4, batch_norm=batch_norm)
    D = sum(p.numel() for p in model.parameters())
    projector = make_projector("dense", D=D, d=20, seed=7)
    w = train_subspace(
        model, projector, x, y, epochs=2, lr=0.01, batch_size=batch_size, seed=9,
        optimizer=optimizer, lr_schedule="cosine",
    )  # fmt: skip
    return {"w": w, **_state(model)}


def qat(n: int, examples: int) -> dict[str, Tensor]:
    x, y = data(n)
    model = convnet(5).eval()
    D = sum(p.numel() for p in model.parameters())
    projector = make_projector("dense", D=D, d=20, seed=7)
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    options = CompressionOptions(qat_steps=6, qat_lr=0.01, qat_examples=examples, seed=2)
    loss = qat_loss(
        model, lambda v: theta0 + projector.matvec(v), x, y, options, torch.device("cpu")
    )
    w0 = 0.1 * torch.randn(20, generator=torch.Generator().manual_seed(1))
    tuned = finetune(w0, loss, uniform_codebook(w0, 4), options)
    return {"w": tuned, "loss": loss(w0).detach()}


def posterior(n: int, batch_size: int, log_sigma: float) -> dict[str, Tensor]:
    """The diagonal posterior trained 2 epochs (σ tiny: the noise draws barely matter)."""
    x, y = data(n)
    model = convnet(2)
    priors = [p.detach().clone() for p in model.parameters()]
    network = build_stochastic_network(model)
    network.set_log_sigma(log_sigma)
    recipe = TrainingRecipe(
        epochs=2, lr=0.02, batch_size=batch_size, objective="quad", keep_best=False, seed=3
    )
    history = train_diagonal_posterior(
        network, priors, 0.05, x, y, recipe, n_bound=n, log_term=4.0, device=torch.device("cpu")
    )
    objective = torch.tensor(history.objective_per_epoch, dtype=torch.float64)
    moved = torch.stack(
        [(s.mu.detach() - p).abs().max() for s, p in zip(network.slots, priors, strict=True)]
    )
    return {"objective": objective, "moved": moved, **_state(network)}


def training(n: int, batch_size: int) -> dict[str, dict[str, Tensor]]:
    """Every training loop on this rank (one process group for all of them)."""
    return {
        "prior": prior(n, batch_size, False),
        "prior_bn": prior(n, batch_size, True),
        "subspace_adam": subspace(n, batch_size, False, "adam"),
        "subspace_sgd_bn": subspace(n, batch_size, True, "sgd"),
        "qat": qat(n, 100),
        "qat_tiny": qat(n, 2),
        "posterior": posterior(n, batch_size, -30.0),
    }


def everything() -> dict[str, Any]:
    """All checks of one rank: the counts and every training loop."""
    return {
        "counting": counting(N, BATCH_SIZES, NAN_ROW),
        "training": training(TRAIN_N, TRAIN_BATCH),
    }


@functools.cache
def group_results(world_size: int) -> list[dict[str, Any]]:
    """:func:`everything` on each rank of a real gloo group of ``world_size`` processes
    (started once per test session and world size: starting ranks costs seconds)."""
    return run_ranks(world_size, everything)

"""Data-parallel training (issue #14): each rank takes its share of every global mini-batch
and the gradients are averaged. One process is bit for bit the code before sharding (the
reference loops below are that code); real 2- and 3-process gloo groups train the same
weights as one process up to floating-point reduction order, and every rank holds the same
model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from pacbound.certify.occam_options import SEED_OFFSETS, CompressionOptions
from pacbound.certify.qat import qat_loss, unflatten
from pacbound.compressors import (
    SubspaceModel,
    make_projector,
    quantization_aware_finetune,
    train_subspace,
    uniform_codebook,
)
from pacbound.errors import NumericalError
from pacbound.parallel import World
from pacbound.parallel import world as world_module
from pacbound.parallel.training import (
    average_buffers,
    average_gradients,
    batch_share,
    global_sum,
    gradient_mean,
    rank_seed,
    shared_loss,
    summed_counts,
)
from pacbound.posterior.fit import TrainingRecipe, train_diagonal_posterior
from pacbound.posterior.kl import gaussian_kl_differentiable
from pacbound.posterior.network import build_stochastic_network
from pacbound.posterior.objectives import bound_objective
from pacbound.posterior.priors import PriorTrainingRecipe, random_shift, train_prior_mean
from pacbound.posterior.risk import bounded_cross_entropy
from tests.parallel import _workers as workers

CPU = torch.device("cpu")


# --- the one-process helpers are identities -------------------------------------------------


def test_one_process_share_is_the_whole_batch_with_weight_one() -> None:
    idx = torch.tensor([5, 2, 9])
    share = batch_share(idx)
    assert share.rows is idx and share.weight == 1.0 and share.positions == slice(0, 3)
    assert not share.empty


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_shares_split_a_batch_in_order(monkeypatch: pytest.MonkeyPatch, world_size: int) -> None:
    idx = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    rows, weights = [], []
    for rank in range(world_size):
        monkeypatch.setattr(world_module, "_CURRENT", World(rank=rank, world_size=world_size))
        share = batch_share(idx)
        assert torch.equal(share.rows, idx[share.positions])
        assert share.weight == share.rows.numel() / 5
        rows += share.rows.tolist()
        weights.append(share.weight)
    assert rows == idx.tolist()
    assert math.isclose(sum(weights), 1.0)


def test_one_process_collectives_change_nothing() -> None:
    t = torch.tensor([1.5, -2.0], requires_grad=True)
    assert global_sum(t) is t and gradient_mean(t) is t
    loss = shared_loss(t.square().mean(), batch_share(torch.arange(4)), like=t)
    loss.backward()
    assert t.grad is not None and torch.equal(t.grad, t.detach())  # d mean(t²)/dt = t
    unused = nn.Parameter(torch.ones(2))
    average_gradients([t, unused])
    assert torch.equal(t.grad, t.detach()) and unused.grad is None
    bn = nn.BatchNorm1d(2)
    bn.running_mean.fill_(0.25)
    average_buffers(bn)
    assert torch.equal(bn.running_mean, torch.full((2,), 0.25))
    assert summed_counts((3, 4), None) == (3, 4)
    with pytest.raises(NumericalError, match="boom"):
        summed_counts((3, 4), NumericalError("boom"))


def test_rank_seed_keeps_rank_zero_and_separates_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert rank_seed(7) == 7
    seeds = []
    for rank in (1, 2):
        monkeypatch.setattr(world_module, "_CURRENT", World(rank=rank, world_size=3))
        seeds.append(rank_seed(7))
        assert rank_seed(7) == seeds[-1]  # deterministic
    assert len({7, *seeds}) == 3 and all(0 <= s < 2**63 for s in seeds)


# --- one process is bit for bit the code before sharding ------------------------------------


def _old_prior(model: nn.Module, x: Tensor, y: Tensor, r: PriorTrainingRecipe) -> nn.Module:
    """train_prior_mean before sharding."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.seed)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum)
        gen = torch.Generator().manual_seed(r.seed)
        n = x.shape[0]
        total_steps, step = r.epochs * math.ceil(n / r.batch_size), 0
        for _ in range(r.epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, r.batch_size):
                for group in opt.param_groups:
                    group["lr"] = 0.5 * r.lr * (1.0 + math.cos(math.pi * step / total_steps))
                idx = perm[start : start + r.batch_size]
                loss = F.cross_entropy(model(random_shift(x[idx], r.augment_shift, gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
    return model.eval()


def test_prior_training_in_one_process_is_unchanged() -> None:
    x, y = workers.data(workers.TRAIN_N)
    recipe = PriorTrainingRecipe(
        epochs=2, lr=0.05, batch_size=48, augment_shift=1, lr_schedule="cosine", seed=4
    )
    new = train_prior_mean(workers.convnet(3, batch_norm=True), x, y, recipe, device=CPU)
    old = _old_prior(workers.convnet(3, batch_norm=True), x, y, recipe)
    for (name, a), b in zip(new.state_dict().items(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _old_subspace(model: nn.Module, projector, x: Tensor, y: Tensor, *, sgd: bool) -> Tensor:  # type: ignore[no-untyped-def]
    """train_subspace before sharding (epochs 2, lr 0.01, batch 50, seed 9, cosine)."""
    subspace = SubspaceModel(model, projector)
    subspace.train()
    opt: torch.optim.Optimizer = (
        torch.optim.SGD([subspace.w], lr=0.01, momentum=0.9)
        if sgd
        else torch.optim.Adam([subspace.w], lr=0.01)
    )
    gen, total, step = torch.Generator().manual_seed(9), 2 * math.ceil(len(x) / 50), 0
    for _ in range(2):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 50):
            idx = order[start : start + 50]
            for group in opt.param_groups:
                group["lr"] = 0.5 * 0.01 * (1.0 + math.cos(math.pi * step / total))
            step += 1
            opt.zero_grad()
            F.cross_entropy(subspace(x[idx]), y[idx]).backward()
            opt.step()
    return subspace.w.detach().clone()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_subspace_training_in_one_process_is_unchanged(optimizer: str) -> None:
    x, y = workers.data(workers.TRAIN_N)
    models = [workers.convnet(4, batch_norm=True) for _ in range(2)]
    D = sum(p.numel() for p in models[0].parameters())
    projector = make_projector("dense", D=D, d=20, seed=7)
    new = train_subspace(
        models[0], projector, x, y, epochs=2, lr=0.01, batch_size=50, seed=9,
        optimizer=optimizer, lr_schedule="cosine",
    )  # fmt: skip
    old = _old_subspace(models[1], projector, x, y, sgd=optimizer == "sgd")
    assert torch.equal(new, old)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_qat_in_one_process_is_unchanged() -> None:
    x, y = workers.data(workers.TRAIN_N)
    model = workers.convnet(5).eval()
    D = sum(p.numel() for p in model.parameters())
    projector = make_projector("dense", D=D, d=20, seed=7)
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def to_theta(v: Tensor) -> Tensor:
        return theta0 + projector.matvec(v)

    options = CompressionOptions(qat_steps=6, qat_lr=0.01, qat_examples=100, seed=2)
    gen = torch.Generator().manual_seed(options.seed + SEED_OFFSETS["qat_subset"])
    idx = torch.randperm(x.shape[0], generator=gen)[:100]

    def old_loss(v: Tensor) -> Tensor:  # qat_loss before sharding
        return F.cross_entropy(
            functional_call(model, unflatten(model, to_theta(v)), (x[idx],)), y[idx]
        )

    new_loss = qat_loss(model, to_theta, x, y, options, CPU)
    w0 = 0.1 * torch.randn(20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(new_loss(w0), old_loss(w0))
    book = uniform_codebook(w0, 4)
    tuned = [
        quantization_aware_finetune(w0, f, book, steps=6, lr=0.01) for f in (new_loss, old_loss)
    ]
    assert torch.equal(*tuned) and not torch.equal(tuned[0], w0)


def _old_posterior(network, priors, x, y, recipe: TrainingRecipe):  # type: ignore[no-untyped-def]
    """train_diagonal_posterior before sharding (keep_best off, SGD, objective kl)."""
    network.eval()
    gen = torch.Generator().manual_seed(recipe.seed)
    log_scale = torch.tensor(math.log(0.05), requires_grad=True)
    mean_opt = torch.optim.SGD(network.mean_parameters(), lr=recipe.lr, momentum=recipe.momentum)
    sigma_opt = torch.optim.Adam([*network.log_sigma_parameters(), log_scale], lr=recipe.sigma_lr)
    shuffle = torch.Generator().manual_seed(recipe.seed)
    for _ in range(recipe.epochs):
        network.set_mode("shared", gen)
        perm = torch.randperm(x.shape[0], generator=shuffle)
        for start in range(0, x.shape[0], recipe.batch_size):
            idx = perm[start : start + recipe.batch_size]
            surrogate = bounded_cross_entropy(network(x[idx]), y[idx], recipe.p_min)
            kl = sum(
                (
                    gaussian_kl_differentiable(
                        s.mu, torch.exp(s.log_sigma), m, torch.exp(log_scale)
                    )
                    for s, m in zip(network.slots, priors, strict=True)
                ),
                torch.zeros((), dtype=torch.float64),
            )
            objective = bound_objective(surrogate, kl, n=x.shape[0], log_term=4.0, objective="kl")
            mean_opt.zero_grad(set_to_none=True)
            sigma_opt.zero_grad(set_to_none=True)
            objective.backward()
            mean_opt.step()
            sigma_opt.step()


def test_posterior_training_in_one_process_is_unchanged() -> None:
    x, y = workers.data(workers.TRAIN_N)
    recipe = TrainingRecipe(epochs=2, lr=0.02, batch_size=50, keep_best=False, seed=3)
    networks = []
    for _ in range(2):
        model = workers.convnet(2)
        priors = [p.detach().clone() for p in model.parameters()]
        network = build_stochastic_network(model)
        network.set_log_sigma(math.log(0.03))
        networks.append((network, priors))
    (new, priors), (old, _) = networks
    train_diagonal_posterior(
        new, priors, 0.05, x, y, recipe, n_bound=workers.TRAIN_N, log_term=4.0, device=CPU
    )
    _old_posterior(old, priors, x, y, recipe)
    for a, b in zip(new.state_dict().values(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# --- real process groups --------------------------------------------------------------------

#: Loops whose result does not depend on the split of a batch but for floating-point
#: reduction order (no BatchNorm batch statistics, no dropout).
SPLIT_FREE = ("subspace_adam", "qat", "qat_tiny", "posterior")

#: Loops every rank runs on all of its data (not sharded): bit for bit the one-process result.
REPLICATED = ("prior", "prior_bn")


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_real_process_group_trains_the_one_process_weights(world_size: int) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (tests/parallel/_spawn.py): the same kernels
    try:
        one = workers.training(workers.TRAIN_N, workers.TRAIN_BATCH)
    finally:
        torch.set_num_threads(threads)
    ranks = [r["training"] for r in workers.group_results(world_size)]
    for loop, expected in one.items():
        for name, value in expected.items():
            for rank in ranks[1:]:  # every rank holds the same model, bit for bit
                assert torch.equal(rank[loop][name], ranks[0][loop][name]), (loop, name)
            got = ranks[0][loop][name]
            assert got.shape == value.shape and bool(torch.all(torch.isfinite(got.double())))
            if not value.is_floating_point() or loop in REPLICATED:
                # step counters (rank 0's, as in one process); the data-dependent prior,
                # which verify re-derives bit for bit at any world size
                assert torch.equal(got, value), (loop, name)
            elif loop in SPLIT_FREE:
                assert torch.allclose(got, value, rtol=1e-5, atol=1e-6), (loop, name)
    # the loops did train: the one-process weights moved away from the start
    start = 0.1 * torch.randn(20, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(one["qat"]["w"], start)
    assert float(one["posterior"]["objective"][1]) < float(one["posterior"]["objective"][0])
    assert bool(torch.all(one["posterior"]["moved"] > 1e-3))

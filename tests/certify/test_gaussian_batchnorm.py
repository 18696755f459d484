"""BatchNorm certified without folding (MATH.md §10): the posterior covers each eval-mode
BatchNorm's per-channel affine (a, c); the prior mean is (a₀, c₀) from the init file, a fresh
build or the data prior trained on S_prior only; ``verify`` re-derives it bit for bit; the
report says how each normalization layer was treated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load, save_file
from torch import Tensor, nn

from pacbound.certify.gaussian import certify_gaussian
from pacbound.certify.gaussian_facts import gaussian_facts
from pacbound.certify.gaussian_method import GAUSSIAN
from pacbound.certify.gaussian_options import GaussianOptions
from pacbound.certify.gaussian_prior import derive_prior
from pacbound.certify.method import RunInputs
from pacbound.errors import InvalidInputError
from pacbound.io import load_dataset, load_model
from pacbound.models import convnet
from pacbound.posterior.network import Sampler
from pacbound.posterior.normalization import affine_state
from pacbound.posterior.priors import PriorMean, PriorTrainingRecipe, ScaleGrid

ARCH_KWARGS = {"channels": [1], "hidden": 2, "num_classes": 2, "batch_norm": True}
PARAMS: dict[str, Any] = {
    "prior": "init",
    "posterior": "isotropic",
    "prior_scales": "1e-3:1:13",
    "prior_fraction": 0.5,
    "prior_epochs": 1,
    "prior_lr": 0.05,
    "prior_lr_schedule": "cosine",
    "prior_augment_shift": 0,
    "seed": 0,
    "posterior_epochs": 1,
    "posterior_lr": 1e-3,
    "posterior_optimizer": "sgd",
    "keep_best": False,
    "sigma_lr": 1e-2,
    "p_min": 0.5,
    "objective": "kl",
    "mc_passes": 1,
    "delta": 0.05,
    "mc_delta": None,
    "heldout_delta": None,
    "disagreement_delta": None,
    "batch_size": 64,
    "allow_nondeterministic": False,
    "sampler": "auto",  # layers: ChannelAffine has an exact layer sampler
    "init": "init.safetensors",
}


def _images(n: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = 0.5 * torch.randn(n, 1, 28, 28, generator=gen) + (2 * y - 1).float()[:, None, None, None]
    return x, y


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bn")
    x, y = _images(40, 0)
    np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
    torch.manual_seed(0)
    model = convnet(**ARCH_KWARGS)  # type: ignore[arg-type]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "init.safetensors")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(10):  # train mode: the running statistics move away from the init's
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, root / "final.safetensors")
    return root


def _inputs(task: Path) -> RunInputs:
    return RunInputs(
        checkpoint=load_model(task / "final.safetensors", arch="convnet", arch_kwargs=ARCH_KWARGS),
        data=load_dataset(task / "train.npz"),
        init=task / "init.safetensors",
    )


@pytest.mark.parametrize("prior", ["init", "data"])
def test_batch_norm_is_certified_and_rederived_bit_for_bit(task: Path, prior: str) -> None:
    options = GAUSSIAN.options({**PARAMS, "prior": prior})
    run = GAUSSIAN.run(_inputs(task), options)
    res = dict(run.certificate.results)
    assert run.options["sampler"] == "layers"
    source = "the init statistics" if prior == "init" else "statistics on S_prior only"
    assert res["posterior"]["normalization"] == [
        {
            "module": "1",
            "type": "BatchNorm2d",
            "treatment": f"per-channel affine a, c covered by the posterior; prior from {source}",
        }
    ]
    tensors = load(run.certificate.hypothesis)
    assert {"posterior.mu/1.scale", "posterior.mu/1.shift", "prior.mu/1.scale"} <= set(tensors)
    assert not any("running" in key or "/1.weight" in key for key in tensors)
    model = _inputs(task).loaded.module
    bn = model[1]  # type: ignore[index]
    a = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(
        tensors["posterior.mu/1.scale"], a
    )  # Q is centred at the checkpoint's (a, c)
    if prior == "init":  # the prior at the init file's (a₀, c₀): γ₀/√(1 + ε), β₀
        init = load((task / "init.safetensors").read_bytes())
        expected = affine_state(model, init)
        assert torch.equal(tensors["prior.mu/1.scale"], expected["1.scale"])
        assert torch.equal(tensors["prior.mu/1.scale"], torch.full((1,), 1 / (1 + 1e-5) ** 0.5))
    rows = dict(gaussian_facts(res).rows)
    assert (
        rows["  normalization layers"]
        == "1 BatchNorm2d: " + res["posterior"]["normalization"][0]["treatment"]
    )
    recorded = GAUSSIAN.options_from_report(run.options)
    again = GAUSSIAN.rederive(_inputs(task), recorded, run.certificate.hypothesis)
    assert again.results["posterior"]["normalization"] == res["posterior"]["normalization"]
    assert again.bound == run.certificate.bound
    assert again.results["kl_nats"] == res["kl_nats"]
    assert again.results["empirical_risk"] == res["empirical_risk"]


def test_the_data_prior_never_sees_the_checkpoints_statistics(task: Path) -> None:
    """The prior's BatchNorm starts from the init file's statistics, whatever the
    checkpoint's running statistics are (they have seen S_bound)."""
    x, y = _images(40, 0)
    init = load((task / "init.safetensors").read_bytes())
    options = GaussianOptions(
        prior=PriorMean.DATA,
        prior_scales=ScaleGrid.log_spaced(1e-3, 1.0, 3),
        prior_recipe=PriorTrainingRecipe(epochs=1, batch_size=16),
    )
    means = []
    for shift in (0.0, 5.0):
        model = _inputs(task).loaded.module
        with torch.no_grad():
            model[1].running_mean.add_(shift)  # type: ignore[index]
        prior = derive_prior(
            model, x, y, options=options, init_state=init, device=torch.device("cpu")
        )
        means.append(prior.means)
    assert len(means[0]) == 8  # conv w, b; BN scale, shift; two linear layers
    for first, second in zip(*means, strict=True):
        assert torch.equal(first, second)


class _Attention(nn.Module):
    """A small transformer block on 4 tokens of 4 features (MHA, LayerNorm, Embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.pos = nn.Embedding(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x.reshape(-1, 4, 4)) + self.pos.weight
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a).mean(1))


def _bn_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)
    )


@pytest.mark.parametrize("make", [_bn_cnn, _Attention], ids=["bn-cnn", "attention"])
def test_diagonal_posterior_and_data_prior_on_any_architecture(make: Any) -> None:
    """--posterior diagonal with --prior data through the functional sampler (training with
    one shared draw per batch; the certificate with per-example draws)."""
    from pacbound.posterior.fit import TrainingRecipe

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (64,), generator=gen)
    x = torch.randn(64, 1, 4, 4, generator=gen) + (2 * y - 1).float()[:, None, None, None]
    torch.manual_seed(0)
    model = make()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    options = GaussianOptions(
        prior=PriorMean.DATA,
        posterior="diagonal",
        prior_scales=ScaleGrid.log_spaced(1e-3, 1.0, 3),
        prior_recipe=PriorTrainingRecipe(epochs=1, batch_size=16),
        training=TrainingRecipe(epochs=2, batch_size=16, keep_best=False),
        mc_passes=1,
        search_examples=8,
        batch_size=32,
        sampler=Sampler.FUNCTIONAL,
    )
    cert = certify_gaussian(model, x, y, options=options, init_state=init)
    post = cert.to_dict()["posterior"]
    assert post["kind"] == "diagonal" and len(post["training_objective_per_epoch"]) == 2
    assert post["sigma_min"] < post["sigma_max"]  # per-weight σ were trained
    assert cert.n_bound == 32 and 0.0 < cert.value <= 1.0
    names = [slot.name for slot in cert.network.slots]
    if make is _bn_cnn:
        assert names == ["0.weight", "0.bias", "1.scale", "1.shift", "4.weight", "4.bias"]


def test_a_forward_that_trains_its_batch_norm_is_refused_by_certify() -> None:
    class TrainsItsNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.bn = nn.BatchNorm1d(3)
            self.out = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            self.bn.train()
            return self.out(self.bn(self.fc(x)))

    model = TrainsItsNorm()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    options = GaussianOptions(prior_scales=ScaleGrid.log_spaced(1e-3, 1.0, 3))
    for sampler in (Sampler.FUNCTIONAL, Sampler.LAYERS):
        with pytest.raises(InvalidInputError, match=r"changes its state.*bn \(BatchNorm1d"):
            certify_gaussian(
                model, x, y, options=GaussianOptions(**{**options.__dict__, "sampler": sampler}),
                init_state=init,
            )  # fmt: skip


def test_batch_norm_without_running_statistics_is_refused_by_certify() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with pytest.raises(InvalidInputError, match=r"BatchNorm 1 \(BatchNorm1d\).*batch mixing"):
        certify_gaussian(model, x, y, options=GaussianOptions(prior=PriorMean.ZERO))


def test_a_forward_reading_batch_norm_statistics_is_refused() -> None:
    """Raw use of a BatchNorm's buffers outside its call cannot be covered: refused (was an
    AttributeError traceback on the layers path)."""

    class ReadsStatistics(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.bn = nn.BatchNorm1d(3)
            self.out = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(self.bn(self.fc(x)) + self.bn.running_mean)

    model = ReadsStatistics().eval()
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for sampler in (Sampler.FUNCTIONAL, Sampler.LAYERS):
        options = GaussianOptions(prior=PriorMean.ZERO, sampler=sampler)
        with pytest.raises(InvalidInputError, match=r"BatchNorm layers \(bn\) as per-channel"):
            certify_gaussian(model, x, y, options=options)

"""The Gaussian certification pipeline on a small synthetic task (fast, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pacbound.bounds import mc_upper_per_example, pac_bayes_kl
from pacbound.certify.gaussian import certify_gaussian
from pacbound.certify.gaussian_options import GaussianOptions
from pacbound.errors import InvalidInputError, NumericalError
from pacbound.posterior.fit import TrainingRecipe
from pacbound.posterior.priors import PriorMean, PriorTrainingRecipe, ScaleGrid


def _task(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 10, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    return x, y


def _trained() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(50):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), init


FAST = dict(
    prior_scales=ScaleGrid.log_spaced(1e-3, 1.0, 13),
    mc_passes=3,
    search_examples=300,
    batch_size=256,
)


def test_isotropic_certificate_is_consistent() -> None:
    model, init = _trained()
    x, y = _task()
    cert = certify_gaussian(model, x, y, options=GaussianOptions(**FAST), init_state=init)
    budget = cert.budget
    assert math.isclose(budget.spent, 0.05)
    # The certificate is exactly the kl bound at the Monte-Carlo upper bound, n = 600.
    mc = mc_upper_per_example(cert.empirical_risk_estimate, n=600, passes=3, delta=0.01)
    assert cert.monte_carlo.value == mc.value
    expected = pac_bayes_kl(mc.value, kl=cert.kl_nats, n=600, delta=0.04 / 13)
    assert cert.value == expected.value
    assert cert.empirical_risk_estimate <= cert.monte_carlo.value <= cert.value <= 1.0
    assert cert.verdict.non_vacuous == (cert.value < 0.5)
    # Information-only bounds never beat the certificate's kl form (same inputs).
    assert cert.information["quad"].value >= cert.value
    assert cert.information["classic"].value >= cert.value
    assert cert.monte_carlo.n == 1800  # n·K independent draws


def test_same_seed_same_certificate_and_seed_matters() -> None:
    model, init = _trained()
    x, y = _task()
    a = certify_gaussian(model, x, y, options=GaussianOptions(**FAST), init_state=init)
    b = certify_gaussian(model, x, y, options=GaussianOptions(**FAST), init_state=init)
    c = certify_gaussian(model, x, y, options=GaussianOptions(**FAST, seed=1), init_state=init)
    assert a.to_dict() == b.to_dict()
    assert a.empirical_risk_estimate != c.empirical_risk_estimate or a.value != c.value


def test_data_dependent_prior_counts_only_the_bound_part() -> None:
    model, init = _trained()
    x, y = _task()
    opts = GaussianOptions(
        **FAST,
        prior=PriorMean.DATA,
        prior_fraction=0.25,
        prior_recipe=PriorTrainingRecipe(epochs=2, batch_size=50),
        posterior="diagonal",
        training=TrainingRecipe(epochs=2, batch_size=100),
    )
    cert = certify_gaussian(model, x, y, options=opts, init_state=init)
    assert cert.n_bound == 450  # 600 − ⌊0.25·600⌋, never 600
    assert cert.certificate.n == 450
    assert cert.monte_carlo.n == 450 * 3
    assert cert.prior["split"]["n_prior"] == 150
    assert len(cert.posterior["training_objective_per_epoch"]) == 2


def test_zero_prior_and_diagonal_training_run() -> None:
    model, _ = _trained()
    x, y = _task()
    opts = GaussianOptions(
        **FAST,
        prior=PriorMean.ZERO,
        posterior="diagonal",
        training=TrainingRecipe(epochs=1, batch_size=200),
    )
    cert = certify_gaussian(model, x, y, options=opts)
    assert 0.0 < cert.value <= 1.0
    assert cert.posterior["sigma_min"] <= cert.posterior["sigma_max"]


def test_init_prior_needs_init() -> None:
    model, _ = _trained()
    x, y = _task()
    with pytest.raises(InvalidInputError, match="--init"):
        certify_gaussian(model, x, y, options=GaussianOptions(**FAST))


def test_mc_delta_must_leave_room_for_pac_bayes() -> None:
    model, init = _trained()
    x, y = _task()
    with pytest.raises(InvalidInputError, match="--mc-delta"):
        certify_gaussian(
            model,
            x,
            y,
            options=GaussianOptions(**FAST, delta=0.05, mc_delta=0.05),
            init_state=init,
        )


class _Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.randn(x.shape[0], 2)


def test_nondeterministic_model_is_refused_unless_opted_out() -> None:
    model = _Noisy()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _task()
    with pytest.raises(InvalidInputError, match="not deterministic"):
        certify_gaussian(model, x, y, options=GaussianOptions(**FAST), init_state=init)
    cert = certify_gaussian(
        model,
        x,
        y,
        options=GaussianOptions(**FAST, check_deterministic=False),
        init_state=init,
    )
    assert 0.0 < cert.value <= 1.0


def test_diverging_training_raises_numerical_error_with_step() -> None:
    model, init = _trained()
    x, y = _task()
    opts = GaussianOptions(
        **FAST,
        posterior="diagonal",
        training=TrainingRecipe(epochs=3, lr=1e30, sigma_lr=1e30, batch_size=100),
    )
    with pytest.raises(NumericalError, match=r"epoch \d+, step \d+"):
        certify_gaussian(model, x, y, options=opts, init_state=init)


def test_heldout_bound_is_for_the_checkpoint() -> None:
    model, init = _trained()
    x, y = _task()
    xt, yt = _task(n=400, seed=1)
    cert = certify_gaussian(
        model,
        x,
        y,
        options=GaussianOptions(**FAST),
        init_state=init,
        heldout=(xt, yt),
    )
    assert cert.heldout is not None
    errors = int((model(xt).argmax(1) != yt).sum())
    assert cert.heldout.terms["errors"] == errors
    assert cert.heldout.n == 400
    assert "point weights" in cert.to_dict()["heldout"]["certified_classifier"]


@pytest.mark.parametrize("offset", [1, 3, 5])
def test_training_seed_must_not_replay_a_certificate_stream(offset: int) -> None:
    model, init = _trained()
    x, y = _task()
    opts = GaussianOptions(
        **FAST,
        posterior="diagonal",
        training=TrainingRecipe(epochs=1, seed=10 + offset),
        seed=10,
    )
    with pytest.raises(InvalidInputError, match="would replay a random stream"):
        certify_gaussian(model, x, y, options=opts, init_state=init)


def test_seeded_fresh_init_must_reinitialize_every_parameter() -> None:
    """Without --init the data prior starts from a re-initialized copy of the model; a
    parameter that cannot be re-initialized would start it at the trained weights."""
    x, y = _task()
    torch.manual_seed(0)
    frozen = nn.Linear(8, 2)
    frozen.reset_parameters = lambda: None  # type: ignore[method-assign]  # nothing re-inits it
    with torch.no_grad():
        frozen.weight.normal_()
        frozen.bias.zero_()
    model = nn.Sequential(nn.Linear(x.shape[1], 8), nn.ReLU(), frozen)
    opts = GaussianOptions(**FAST, prior=PriorMean.DATA, prior_fraction=0.5)
    with pytest.raises(InvalidInputError, match=r"2 parameter\(s\) could not be re-initialized"):
        certify_gaussian(model, x, y, options=opts)


class _BatchNoise(torch.nn.Module):
    """Random by design, one draw per forward call (shared by the whole batch), counting its
    calls: the certificate must evaluate it one example at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x + torch.randn(1, x.shape[1]))


def test_a_model_random_by_design_is_evaluated_one_example_at_a_time() -> None:
    torch.manual_seed(0)
    model = _BatchNoise()
    x = torch.randn(60, 4)
    y = torch.randint(0, 2, (60,))
    opts = GaussianOptions(
        **{**FAST, "mc_passes": 1}, prior=PriorMean.ZERO, check_deterministic=False
    )
    assert opts.certificate_batch_size == 1
    assert GaussianOptions(**FAST).certificate_batch_size == GaussianOptions(**FAST).batch_size
    calls_before = model.calls
    cert = certify_gaussian(model, x, y, options=opts)
    # The network's copy of the model counts its own calls: one per example per pass, plus
    # the agreement pass; nothing the batched search did is part of the certificate.
    assert cert.monte_carlo.n == 60
    assert cert.network.net.calls - calls_before >= 2 * 60


def test_a_model_returning_a_tuple_is_refused_with_one_line() -> None:
    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fc(x), x

    with pytest.raises(InvalidInputError, match="returned a tuple"):
        certify_gaussian(
            Pair(),
            torch.randn(8, 4),
            torch.zeros(8, dtype=torch.int64),
            options=GaussianOptions(**FAST, prior=PriorMean.ZERO),
        )


def test_seeded_fresh_init_reinitializes_multihead_attention() -> None:
    """nn.MultiheadAttention has only ``_reset_parameters``; the data prior without --init
    re-initializes it too, so no prior tensor starts at the trained weights."""
    from pacbound.certify.gaussian_prior import data_dependent_prior
    from pacbound.posterior.priors import PriorTrainingRecipe

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.proj(x.view(x.shape[0], 2, 4))
            return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    model = Attn().eval()
    with torch.no_grad():  # "trained": every tensor moved off its initial value
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y = torch.randn(40, 8), torch.randint(0, 2, (40,))
    _, prior = data_dependent_prior(
        model,
        x,
        y,
        prior_fraction=0.5,
        recipe=PriorTrainingRecipe(epochs=1, lr=1e-9, seed=0),
        seed=3,
        init_state=None,
        device=torch.device("cpu"),
    )
    trained = dict(model.named_parameters())
    for name, p in prior.named_parameters():
        assert not torch.equal(p, trained[name]), name

"""The invariant behind every Gaussian certificate (MATH.md §10): every tensor the network
computes with is covered by the posterior or fixed before the data, and each weight is drawn
once per example. Each model here got an optimistic certificate before issue #11."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.layers import GaussianLinear
from pacbound.posterior.network import build_stochastic_network


def _x(n: int = 4, d: int = 6) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Linear(6, 6)
        self.hidden = nn.Linear(6, 6)
        self.out = nn.Linear(6, 6)
        self.out.weight = self.dummy.weight  # one weight under two names

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(x)))


class _CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.block(torch.relu(self.block(x)))))


class _RawUse(nn.Module):
    """Reads a layer's weight with a functional op outside the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.fc(x) + x @ self.fc.weight.T)


class _Closure(nn.Module):
    """Keeps a hidden reference to a weight (a plain list, invisible to named_parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)
        self.hidden_refs = [self.fc.weight]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) + x @ self.hidden_refs[0].T


class _IntMemory(nn.Module):
    """An integer buffer that memorises labels: a classic way to cheat a bound."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)
        self.register_buffer("table", torch.zeros(4, dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) + self.table[: x.shape[0], None].float()


class _BatchMixing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x - x.mean(dim=0, keepdim=True))


class _Flattens(nn.Module):
    """Reshapes (B, T, F) to (B·T, F) before a Linear: draws would be per token."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        return self.fc(x.reshape(-1, 3)).reshape(b, -1).sum(dim=1, keepdim=True).repeat(1, 2)


def test_tied_weights_are_refused_naming_both_names() -> None:
    with pytest.raises(InvalidInputError, match=r"out\.weight = dummy\.weight"):
        build_stochastic_network(_Tied())


def test_a_module_reached_twice_is_refused() -> None:
    shared = nn.Linear(6, 6)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(InvalidInputError, match=r"2 = 0"):
        build_stochastic_network(model)


def test_a_block_called_twice_in_forward_is_refused() -> None:
    net = build_stochastic_network(_CalledTwice())
    with pytest.raises(InvalidInputError, match=r"'block' is called twice"):
        net.check_coverage(_x())
    net.set_mode("per_example", torch.Generator().manual_seed(1))
    with pytest.raises(InvalidInputError, match="called twice"), torch.no_grad():
        net(_x())  # every forward is guarded, not only the probe


def test_a_weight_read_outside_its_layer_is_refused() -> None:
    net = build_stochastic_network(_RawUse())
    with pytest.raises(InvalidInputError, match=r"reads fc\.weight outside"):
        net.check_coverage(_x())


def test_a_weight_held_outside_the_module_tree_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"outside its parameters and buffers \(hidden"):
        build_stochastic_network(_Closure())


class _PlainMemo(nn.Module):
    """Training data in plain tensor attributes: a nearest-neighbour lookup (review)."""

    def __init__(self, keys: Tensor, labels: Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)
        self.keys, self.labels = keys, labels

    def forward(self, x: Tensor) -> Tensor:
        nearest = self.labels[torch.cdist(x, self.keys).argmin(dim=1)]
        return self.fc(x) * 0 + 10 * nn.functional.one_hot(nearest, 2).float()


def _closure_memo(keys: Tensor) -> nn.Module:
    store = {"keys": keys}  # invisible to the module tree: only a forward pass shows it

    class Memo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x) + torch.cdist(x, store["keys"]).min(dim=1).values[:, None]

    return Memo()


class _ParametersRoute(nn.Module):
    """Reads the layers' weights through .parameters(): they would be the posterior means,
    used as point weights (review)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 8, bias=False)
        self.l2 = nn.Linear(8, 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(nn.functional.linear(x, next(self.l1.parameters())))
        return nn.functional.linear(h, next(self.l2.parameters()))


class _Transposed(nn.Module):
    """Batch-first shape at the layer, but its rows mix examples (review)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        h = x.view(b, 3, 2).transpose(0, 1).reshape(b, 3, 2)
        return self.fc(h).reshape(3, b, 2).transpose(0, 1).mean(dim=1)


class _SignFlip(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return -super().forward(x)


def test_plain_tensor_attributes_are_refused() -> None:
    x = _x(20)
    with pytest.raises(InvalidInputError, match=r"\(keys, labels\)"):
        build_stochastic_network(_PlainMemo(x, torch.zeros(20, dtype=torch.int64)))


def test_a_tensor_reached_only_through_a_closure_is_refused_by_the_probe() -> None:
    net = build_stochastic_network(_closure_memo(_x(20)))
    with pytest.raises(InvalidInputError, match=r"tensor of shape \[20, 6\] that is neither"):
        net.check_coverage(_x())


def test_weights_read_through_parameters_are_refused_by_the_probe() -> None:
    net = build_stochastic_network(_ParametersRoute())
    with pytest.raises(InvalidInputError, match=r"weight of layer 'l1' outside"):
        net.check_coverage(_x())


def test_a_layer_whose_rows_are_not_examples_is_refused() -> None:
    net = build_stochastic_network(_Transposed())
    with pytest.raises(InvalidInputError, match="changes the outputs of other examples"):
        net.check_coverage(_x(5))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: nn.Sequential(_SignFlip(6, 2)), r"0 \(_SignFlip\)"),
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), "reflect"),
        (
            lambda: nn.utils.parametrizations.weight_norm(nn.Linear(6, 2)),
            r"0 \(ParametrizedLinear\)",
        ),
    ],
)
def test_layers_that_do_not_compute_as_plain_layers_are_refused(make: Any, message: str) -> None:
    model = make()
    if isinstance(model, nn.Linear):
        model = nn.Sequential(model)
    with pytest.raises(InvalidInputError, match=message):
        build_stochastic_network(model)


def test_a_layer_with_a_hook_or_an_extra_parameter_is_refused() -> None:
    model = nn.Sequential(nn.Linear(6, 2))
    model[0].register_forward_hook(lambda mod, inp, out: out * 2)
    with pytest.raises(InvalidInputError, match=r"0 \(forward hooks\)"):
        build_stochastic_network(model)
    model = nn.Sequential(nn.Linear(6, 2))
    model[0].lora = nn.Parameter(torch.zeros(2))
    with pytest.raises(InvalidInputError, match=r"0 \(extra parameters lora\)"):
        build_stochastic_network(model)


def test_layer_attributes_stay_readable_and_nan_buffers_compare_equal() -> None:
    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 2)
            self.register_buffer("missing", torch.tensor([float("nan"), 1.0]))

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x.view(-1, self.fc.in_features))

    model = Reads()
    net = build_stochastic_network(model, fixed_buffers={"missing": model.missing.clone()})
    net.check_coverage(_x())


def test_integer_buffers_must_equal_the_reference() -> None:
    model = _IntMemory()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    model.table.copy_(torch.tensor([1, 0, 1, 1]))  # "trained" on the labels
    with pytest.raises(InvalidInputError, match=r"table \(int64\)"):
        build_stochastic_network(model, fixed_buffers=fresh)
    with pytest.raises(InvalidInputError, match=r"table \(int64\)"):
        build_stochastic_network(model)
    model.table.zero_()
    build_stochastic_network(model, fixed_buffers=fresh)  # equal to the factory: fine


def test_batch_mixing_models_are_refused() -> None:
    net = build_stochastic_network(_BatchMixing())
    with pytest.raises(InvalidInputError, match="depends on the other examples"):
        net.check_coverage(_x())


def test_a_layer_that_does_not_see_the_batch_first_is_refused() -> None:
    net = build_stochastic_network(_Flattens())
    x = torch.randn(3, 4, 3)
    with pytest.raises(
        InvalidInputError,
        match=r"'fc' receives input of shape \[8, 3\] \(leading dimension 8\) for a batch of 2",
    ):
        net.check_coverage(x)


def test_plain_models_pass_every_check() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    net = build_stochastic_network(model)
    net.check_coverage(_x())
    with torch.no_grad():
        net.set_mode("mean")
        assert torch.allclose(net(_x()), model(_x()), atol=1e-6)


def test_sequence_linear_draws_one_weight_per_example() -> None:
    """On (B, T, F) input every position of an example uses the same weight draw: the
    per-example output equals x_b W_b^T + c_b with W_b, c_b drawn from N(μ, σ²)."""
    base = nn.Linear(3, 2)
    layer = GaussianLinear(base, log_sigma_init=-1.0)
    layer.mode = "per_example"
    b, t = 4000, 5
    x = torch.randn(1, t, 3).expand(b, t, 3).contiguous()  # the same sequence B times
    layer.generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        out = layer(x)  # (B, T, 2)
    # Recover each example's weight draw from its T outputs (least squares, exact here).
    design = torch.cat([x[0], torch.ones(t, 1)], dim=1)  # (T, 4)
    coef = torch.linalg.lstsq(design.expand(b, t, 4), out).solution  # (B, 4, 2)
    residual = design @ coef - out
    assert float(residual.abs().max()) < 1e-4  # one affine map per example, shared by T
    w = coef[:, :3, :].transpose(1, 2)  # (B, 2, 3)
    sigma = float(torch.exp(torch.tensor(-1.0)))
    assert torch.allclose(w.mean(0), base.weight.detach(), atol=5 * sigma / b**0.5)
    assert torch.allclose(w.std(0), torch.full_like(w.std(0), sigma), rtol=0.06)
    # Independent across examples: the draws of neighbours are uncorrelated.
    flat = (w - w.mean(0)).reshape(b, -1)
    corr = float((flat[:-1] * flat[1:]).sum() / (flat.norm() ** 2))
    assert abs(corr) < 0.05


def test_local_reparameterization_per_position_would_differ() -> None:
    """The old behaviour (independent noise per position) is not what we draw now: the
    outputs of two identical positions of one example coincide."""
    layer = GaussianLinear(nn.Linear(3, 2), log_sigma_init=0.0)
    layer.mode = "per_example"
    layer.generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 3).repeat(1, 2, 1)
    with torch.no_grad():
        out = layer(x)
    assert torch.equal(out[:, 0], out[:, 1])


def test_sequence_linear_chunks_examples_within_the_memory_budget() -> None:
    """Chunked per-example draws (a tiny budget: one example per chunk) are still one
    weight per example, and the probe's noise perturbation lands on the right example."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    # three float32 copies of one example's 12 + 4 weights: one example per chunk
    net = build_stochastic_network(model, max_memory=3 * 16 * 4)
    x = torch.randn(5, 2, 3)
    net.check_coverage(x)
    layer = net.net[0]
    layer.guard = None  # called on its own below
    layer.mode = "per_example"
    layer.generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = layer(x.new_ones(5, 2, 3))
    assert torch.equal(out[:, 0], out[:, 1])  # positions of one example share the draw
    assert not torch.equal(out[0], out[1])  # examples do not


class _SwitchesToMean(nn.Module):
    """Forward code that sets the Gaussian layers to their mean (review, round 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self.fc, "weight_mu"):
            self.fc.mode = "mean"
        return self.fc(x)


def test_forward_code_cannot_change_how_a_layer_draws() -> None:
    net = build_stochastic_network(_SwitchesToMean())
    net.set_mode("per_example", torch.Generator().manual_seed(0))
    with pytest.raises(InvalidInputError, match="changes how layer 'fc' draws"), torch.no_grad():
        net(_x())


def test_hooks_cannot_replace_a_draw() -> None:
    """A global forward hook returning the mean output for Gaussian layers never runs on
    them: their draws are made by their own forward only."""

    def mean_instead(mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
        if hasattr(mod, "weight_mu"):
            return nn.functional.linear(inputs[0], mod.weight_mu, mod.bias_mu)
        return None

    net = build_stochastic_network(nn.Sequential(nn.Linear(6, 2)))
    net.set_log_sigma(0.0)
    handle = nn.modules.module.register_module_forward_hook(mean_instead)
    try:
        net.set_mode("per_example", torch.Generator().manual_seed(0))
        with torch.no_grad():
            drawn = net(_x())
        net.set_mode("mean")
        with torch.no_grad():
            mean = net(_x())
    finally:
        handle.remove()
    assert not torch.allclose(drawn, mean)


class _PythonMemo(nn.Module):
    def __init__(self, keys: list[list[float]]) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)
        self.keys = keys

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) + torch.cdist(x, torch.tensor(self.keys)).min(dim=1).values[:, None]


def test_data_in_python_lists_is_refused() -> None:
    keys = _x(20).tolist()
    with pytest.raises(InvalidInputError, match=r"keys \(120 numbers\)"):
        build_stochastic_network(_PythonMemo(keys))
    store = {"keys": keys}

    class Closure(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            table = torch.tensor(store["keys"])
            return self.fc(x) + torch.cdist(x, table).min(dim=1).values[:, None]

    net = build_stochastic_network(Closure())
    with pytest.raises(InvalidInputError, match="builds a tensor from 120 Python/NumPy values"):
        net.check_coverage(_x())


class _RollsSomeRows(nn.Module):
    """Rows 1.. exchange half their features before the layer; row 0 is untouched, so
    perturbing only row 0's draw would not reveal it (review, round 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        rolled = torch.cat([h[:1], torch.roll(h[1:], 1, dims=0)])
        return h + 0.0 * rolled + torch.cat([h[:1] * 0, torch.roll(h[1:], 1, dims=0) * 0.5])


def test_dependence_between_any_two_rows_is_caught() -> None:
    net = build_stochastic_network(_RollsSomeRows())
    with pytest.raises(InvalidInputError, match="changes the outputs of other examples"):
        net.check_coverage(_x(9))


class _Ordinary(nn.Module):
    """Common honest patterns that must pass: device/dtype reads through .parameters(),
    a small constant built from Python numbers, a call counter buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        x = x.to(next(self.parameters()).device)
        scale = torch.tensor([1.0] * 6, device=x.device)
        return self.fc(x * scale)


def test_ordinary_patterns_are_not_refused() -> None:
    model = _Ordinary()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    net = build_stochastic_network(model, fixed_buffers=reference)
    net.check_coverage(_x(64))


def test_half_precision_models_are_not_refused_as_batch_mixing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    ).half()
    net = build_stochastic_network(model)
    net.check_coverage(torch.randn(64, 6).half() * 10)


def test_posterior_training_keeps_normalization_statistics_fixed() -> None:
    """Posterior training runs in eval mode, so a parameter-free BatchNorm does not refit
    its running statistics to the data; a buffer changed anyway is refused (review 3)."""
    from pacbound.posterior.fit import TrainingRecipe, train_diagonal_posterior

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    model.eval()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    net = build_stochastic_network(model, fixed_buffers=fresh)
    x = _x(200) + 50.0
    y = torch.randint(0, 2, (200,))
    recipe = TrainingRecipe(epochs=2, batch_size=50, keep_best=False)
    train_diagonal_posterior(
        net, [p.detach() for p in model.parameters()], 0.1, x, y, recipe,
        n_bound=200, log_term=5.0, device=torch.device("cpu"),
    )  # fmt: skip
    net.check_buffers_unchanged()
    assert torch.equal(net.net[1].running_mean, fresh["1.running_mean"])
    with torch.no_grad():
        net.net[1].running_mean.add_(1.0)
    with pytest.raises(InvalidInputError, match=r"changed the model's buffers \(1\.running_mean"):
        net.check_buffers_unchanged()


def test_forward_code_cannot_flip_the_mode_and_restore_it() -> None:
    class Flips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            saved = self.fc.mode
            self.fc.mode = "mean"
            out = self.fc(x)
            self.fc.mode = saved
            return out

    net = build_stochastic_network(Flips())
    with pytest.raises(InvalidInputError, match="changes how layer 'fc' draws"):
        net.check_coverage(_x())


def test_a_hidden_tensor_written_in_place_is_refused() -> None:
    secret = torch.full((1,), 7.0)

    class Writes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            out = self.fc(x)
            out[:, 0] = secret  # __setitem__ returns None: still checked
            return out

    net = build_stochastic_network(Writes())
    with pytest.raises(InvalidInputError, match=r"tensor of shape \[1\] that is neither"):
        net.check_coverage(_x(4))

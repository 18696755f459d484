"""Built-in architectures: parameter counts, output shapes, layer types, kwargs errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pacbound.errors import InvalidInputError
from pacbound.models import BUILTINS, builtin_help, convnet, lenet5, mlp


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        # 784·600 + 600 + 600·10 + 10
        (mlp(), 477_010),
        # … + 600·600 + 600
        (mlp(hidden=[600, 600]), 837_610),
        # binary outputs: 784·600 + 600 + 600·2 + 2
        (mlp(num_classes=2), 472_202),
        # a linear model: 784·10 + 10
        (mlp(hidden=[]), 7_850),
        # LeCun et al. 1998 sizes: 156 + 2416 + 48120 + 10164 + 850
        (lenet5(), 61_706),
        # 320 + 18496 + 3136·128 + 128 + 1290
        (convnet(), 421_642),
    ],
)
def test_parameter_counts(module: nn.Module, expected: int) -> None:
    assert count(module) == expected


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (mlp(num_classes=2), (5, 1, 28, 28)),
        (lenet5(), (5, 1, 28, 28)),
        (lenet5(input_size=32, in_channels=3), (5, 3, 32, 32)),
        (convnet(channels=[8, 8, 8, 8]), (5, 1, 28, 28)),
        (convnet(in_channels=3, batch_norm=True), (5, 3, 28, 28)),
    ],
)
def test_outputs_are_batch_by_classes(module: nn.Module, shape: tuple[int, ...]) -> None:
    out = module.eval()(torch.rand(shape))
    last = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    assert out.shape == (shape[0], last.out_features)


def test_mlp_is_only_flatten_linear_and_activations() -> None:
    layers = list(mlp(hidden=[600, 600], activation="tanh"))
    assert isinstance(layers[0], nn.Flatten)
    assert [type(m) for m in layers[1:]] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]


def test_mlp_flattens_images_and_vectors_alike() -> None:
    net = mlp(in_features=16, hidden=[4], num_classes=3)
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(net(x), net(x.reshape(2, 16)))


def test_convnet_batch_norm_adds_buffers() -> None:
    plain = {n for n, _ in convnet().named_buffers()}
    with_bn = {n for n, _ in convnet(batch_norm=True).named_buffers()}
    assert plain == set()
    assert with_bn == {
        f"{i}.{b}" for i in (1, 5) for b in ("running_mean", "running_var", "num_batches_tracked")
    }


def test_registry_and_help_name_every_builtin() -> None:
    assert set(BUILTINS) == {"mlp", "lenet5", "convnet"}
    text = builtin_help()
    for name, builtin in BUILTINS.items():
        assert name in text
        assert isinstance(builtin.factory(), nn.Module)


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        (mlp, {"activation": "swish"}, "unknown activation 'swish'; choose one of relu"),
        (mlp, {"hidden": [600, 0]}, "hidden must be a positive integer, got 0"),
        (mlp, {"hidden": "600"}, "hidden must be a list of positive integers"),
        (mlp, {"num_classes": 2.5}, "num_classes must be a positive integer"),
        (lenet5, {"input_size": 30}, "input_size 28 or 32, got 30"),
        (convnet, {"channels": [8] * 5}, "1 to 4 channels entries, got 5"),
        (convnet, {"batch_norm": "yes"}, "batch_norm must be true or false"),
    ],
)
def test_bad_kwargs_name_the_kwarg(factory, kwargs, match) -> None:
    with pytest.raises(InvalidInputError, match=match):
        factory(**kwargs)

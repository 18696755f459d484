"""Built-in architectures: parameter counts, output shapes, layer types, determinism in eval,
kwargs errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pacbound.errors import InvalidInputError
from pacbound.models import BUILTINS, builtin_help, convnet, lenet5, mlp, resnet, transformer


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
        # stem 144 + 32; block 16→16: 2·2304 + 2·32; block 16→32 (stride 2): 4608 + 9216 +
        # 1×1 shortcut 512 + 3·64; block 32→32 (stride 2): 2·9216 + 1024 + 3·64; head 330
        (resnet(), 176 + 4_672 + 14_528 + 19_648 + 330),
        # two blocks per stage add 16→16 (4672) and twice 32→32 (2·9216 + 2·64)
        (resnet(blocks=2), 39_354 + 4_672 + 2 * 18_560),
        # projection 28·48 + 48, positions 28·48; per block: 2 LayerNorms 2·96, attention
        # in_proj 3·48·48 + 144 and out_proj 48·48 + 48, MLP 48·96 + 96 + 96·48 + 48;
        # final LayerNorm 96, head 48·10 + 10
        (transformer(), 1_392 + 1_344 + 2 * (192 + 7_056 + 2_352 + 9_360) + 96 + 490),
        # d = 32, one block, MLP 64: 928 + 896 + (128 + 3168 + 1056 + 4192) + 64 + 330
        (transformer(d_model=32, layers=1, mlp_hidden=64), 10_762),
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
        (resnet(), (5, 1, 28, 28)),
        (resnet(in_channels=3, channels=[4, 4, 8, 8], num_classes=2), (5, 3, 28, 28)),
        (transformer(), (5, 1, 28, 28)),
        (transformer(), (5, 28, 28)),
        (transformer(rows=4, cols=6, d_model=8, heads=2, num_classes=3), (5, 24)),
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


def test_resnet_has_batch_norm_after_every_bias_free_convolution_and_residual_blocks() -> None:
    net = resnet(channels=[4, 8], blocks=2)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    # stem, 2 convolutions per block (4 blocks), one 1×1 shortcut where the width changes
    assert len(convs) == len(norms) == 1 + 2 * 4 + 1
    assert all(c.bias is None for c in convs)
    assert [type(m.shortcut).__name__ for m in net if hasattr(m, "shortcut")] == [
        "Identity",
        "Identity",
        "Sequential",
        "Identity",
    ]
    # the running statistics are buffers (the certificate must account for them)
    assert sum(n.endswith("running_var") for n, _ in net.named_buffers()) == len(norms)


def test_resnet_block_adds_its_input() -> None:
    """A residual block with a zeroed branch is act(x): the identity shortcut is there."""
    block = resnet(channels=[4])[2].eval()
    with torch.no_grad():
        block.branch[2][1].weight.zero_()  # the last BatchNorm's scale: branch output = its bias
        block.branch[2][1].bias.zero_()
    x = torch.randn(3, 4, 7, 7)
    assert torch.equal(block(x), torch.relu(x))


def test_transformer_layers_are_the_standard_modules() -> None:
    net = transformer(layers=2)
    attention = [m for m in net.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attention) == 2
    assert all(m.batch_first and m.dropout == 0.0 and m.num_heads == 4 for m in attention)
    assert sum(isinstance(m, nn.LayerNorm) for m in net.modules()) == 2 * 2 + 1
    assert isinstance(net.embedding, nn.Linear) and net.embedding.in_features == 28
    assert isinstance(net.position, nn.Embedding) and net.position.num_embeddings == 28
    # positions start small (std 0.02, not nn.Embedding's 1) so that the rows' content counts
    assert float(net.position.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert [n for n, _ in net.named_buffers()] == []


def test_transformer_tokens_are_rows_and_positions_matter() -> None:
    """Swapping two rows changes the output (positional embedding); the same rows give the
    same output whatever the input layout."""
    net = transformer(d_model=16, heads=2, layers=1).eval()
    x = torch.rand(4, 1, 28, 28)
    swapped = x.clone()
    swapped[:, :, [0, 27]] = x[:, :, [27, 0]]
    with torch.no_grad():
        assert torch.equal(net(x), net(x.reshape(4, 784)))
        assert not torch.allclose(net(x), net(swapped))
        net.position.weight.zero_()
        # without positions, attention and mean pooling are permutation invariant
        torch.testing.assert_close(net(x), net(swapped), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "factory",
    [lambda: resnet(channels=[4, 8]), lambda: transformer(d_model=16, heads=2)],
    ids=["resnet", "transformer"],
)
def test_new_builtins_are_deterministic_in_eval_and_per_example(factory) -> None:
    """Two eval passes agree bit for bit, and an example's output does not depend on the rest
    of its batch (BatchNorm uses running statistics, attention stays within an example)."""
    torch.manual_seed(0)
    net = factory()
    net.train()
    net(torch.rand(16, 1, 28, 28))  # move the running statistics away from (0, 1)
    net.eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out, net(x))
        torch.testing.assert_close(net(x[2:3]), out[2:3], rtol=1e-5, atol=1e-6)
    # nothing in the eval forward pass changes the model's state
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net(x)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_registry_and_help_name_every_builtin() -> None:
    assert set(BUILTINS) == {"mlp", "lenet5", "convnet", "resnet", "transformer"}
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
        (resnet, {"channels": []}, "resnet takes 1 to 4 channels entries, got 0"),
        (resnet, {"blocks": 0}, "blocks must be a positive integer, got 0"),
        (resnet, {"activation": "swish"}, "unknown activation 'swish'"),
        (transformer, {"d_model": 30, "heads": 4}, "d_model must be a multiple of heads, got"),
        (transformer, {"layers": 0}, "layers must be a positive integer, got 0"),
        (transformer, {"activation": "swish"}, "unknown activation 'swish'"),
    ],
)
def test_bad_kwargs_name_the_kwarg(factory, kwargs, match) -> None:
    with pytest.raises(InvalidInputError, match=match):
        factory(**kwargs)

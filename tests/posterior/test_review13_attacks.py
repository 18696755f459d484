"""Adversarial review of issue #13 (layer samplers, ChannelAffine): regression tests for holes.

Hole 1: the layer-sampler registry matches a module by its exact *type* only. A module of a
registered type whose *instance* ``forward`` was replaced (monkeypatching, an adapter library,
architecture code that sets ``self.fc.forward = ...``) computes something else than the
type's forward, yet ``--sampler layers``/``auto`` replaces it by the Gaussian layer of the
type, and BatchNorm by ChannelAffine: Q is then a posterior over a *different* network than
the checkpoint's architecture (a certificate about a function nobody runs). The run must be
refused, or sent to the functional path (which calls the instance's own forward), so that the
stochastic network at its mean computes what the model computes.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.network import Sampler, auto_sampler, build_stochastic_network
from pacbound.posterior.normalization import to_channel_affine


def _negated(layer: nn.Linear, x: Tensor) -> Tensor:
    return -F.linear(x, layer.weight, layer.bias)


def _batch_stats(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    # normalizes by fixed statistics other than the running ones (here: none, γ·x + β)
    return x * bn.weight + bn.bias


def _flip_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model[2].forward = functools.partial(_negated, model[2])
    return model.eval()


def _mean_matches_or_refused(model: nn.Module, x: Tensor, sampler: Sampler) -> None:
    try:
        net = build_stochastic_network(
            model, fixed_buffers=dict(model.named_buffers()), sampler=sampler
        )
        net.check_coverage(x)
    except InvalidInputError:
        return  # refused: fine
    net.set_mode("mean")
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-6), (
            "the stochastic network at its mean computes another function than the model"
        )


def test_instance_forward_override_is_not_replaced_by_the_layer_sampler() -> None:
    model = _flip_model()
    x = torch.randn(16, 4)
    _mean_matches_or_refused(model, x, Sampler.LAYERS)


def test_auto_sampler_does_not_pick_layers_for_an_overridden_forward() -> None:
    model = _flip_model()
    x = torch.randn(16, 4)
    chosen = auto_sampler(model, x[:8])
    _mean_matches_or_refused(model, x, chosen)


def test_batch_norm_with_overridden_forward_is_not_turned_into_channel_affine() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
        model[1].running_var.fill_(0.25)
    model[1].forward = functools.partial(_batch_stats, model[1])
    x = torch.randn(16, 4)
    try:
        affine = to_channel_affine(model)
    except InvalidInputError:
        return
    with torch.no_grad():
        assert torch.allclose(affine.eval()(x), model(x), atol=1e-5), (
            "ChannelAffine built from running statistics the model's forward never uses"
        )


# Hole 2: with --sampler auto (the CLI default) a model whose forward reads a BatchNorm's
# statistics outside its call crashes (internal error, exit 5) instead of being refused:
# auto_sampler probes the layers before check_affine_form and lets the AttributeError of the
# ChannelAffine-replaced module escape (commit 013c4a8 refuses it only for an explicit sampler).


class _ReadsRunningMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(self.fc(x))
        return self.out(h - self.bn.running_mean)  # type: ignore[operator]


def test_auto_sampler_refuses_not_crashes_on_a_raw_batch_norm_statistic() -> None:
    from pacbound.certify.gaussian import prepare_network
    from pacbound.certify.gaussian_options import GaussianOptions

    torch.manual_seed(0)
    model = _ReadsRunningMean().eval()
    x = torch.randn(32, 6)
    with pytest.raises(InvalidInputError):
        prepare_network(
            model,
            x,
            options=GaussianOptions(sampler=None, batch_size=16),
            fixed_buffers=dict(_ReadsRunningMean().named_buffers()),
            device=torch.device("cpu"),
        )


# Hole 3: the compression (Occam) path does not refuse a forward that changes the model's
# state. Here the decoded model's forward re-estimates its BatchNorm statistics from the
# first batch it sees (a deterministic pass afterwards, so check_deterministic passes): the
# errors are counted on a model whose running statistics come from S, not from the message
# (the coded buffers are overwritten), so the code length does not pay for the tensors the
# certified model computes with. The Gaussian path refuses the same model
# (refuse_state_changes); the compression path certifies it.

ADAPT_MODULE = """
import torch
from torch import nn


class Adapt(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8, momentum=None)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.fc(x)
        was = self.bn.training
        self.bn.train()
        if h.shape[0] > 1 and int(self.bn.num_batches_tracked) == 0:
            self.bn(h)  # running statistics from the first batch seen (part of S)
        self.bn.train(was)
        return self.out(torch.relu(self.bn(h)))


def adapt():
    return Adapt()
"""


def test_compression_refuses_a_forward_that_writes_its_buffers(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    from pathlib import Path

    import numpy as np
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from pacbound.cli.main import cli

    root = Path(str(tmp_path))
    (root / "review13_adapt.py").write_text(ADAPT_MODULE)
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (300,), generator=gen)
    x = torch.randn(300, 6, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
    torch.manual_seed(0)
    model = importlib.import_module("review13_adapt").adapt().eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "adapt.safetensors"))
    args = ["certify", str(root / "adapt.safetensors"), "--method", "quantize", "--levels", "2,4"]
    args += ["--arch", "review13_adapt:adapt", "--data", str(root / "train.npz"), "--quiet"]
    result = CliRunner().invoke(cli, [*args, "-o", str(root / "adapt.json")])
    assert result.exit_code == 3, (
        "a compression certificate of a model whose forward rewrites its buffers from S: "
        + result.output[-300:]
    )


def test_global_module_forward_hooks_are_not_dropped_by_the_layer_sampler() -> None:
    """Hole 1, variant: a global forward hook (``register_module_forward_hook``) rewrites
    every Linear's output in the user's model; the registry looks only at the module's own
    hooks and GaussianModule.__call__ skips hooks, so the layers path drops it (the
    functional path keeps it)."""
    from torch.nn.modules.module import register_module_forward_hook

    def negate_linear(mod: nn.Module, inp: object, out: Tensor) -> Tensor | None:
        return -out if type(mod) is nn.Linear else None

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(16, 4)
    handle = register_module_forward_hook(negate_linear)
    try:
        _mean_matches_or_refused(model, x, auto_sampler(model, x[:8]))
    finally:
        handle.remove()


# Hole 4: a BatchNorm still in train mode after model.eval() (the architecture's train()
# keeps it there: test-time batch statistics; momentum 0 so no buffer changes) normalizes by
# each batch's statistics, mixing examples. to_channel_affine turns it into ChannelAffine
# from the running statistics anyway, refuse_state_changes sees no buffer change and no mode
# flip, and the batch-independence probe runs on the (ChannelAffine) network, not the model:
# the certificate is about a classifier the model does not compute.


class _TestTimeBatchStats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8, momentum=0.0)
        self.out = nn.Linear(8, 2)

    def train(self, mode: bool = True) -> _TestTimeBatchStats:
        super().train(mode)
        self.bn.training = True  # batch statistics at inference too
        return self

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if x.shape[0] == 1:  # a single example: its running statistics
            self.bn.training = False
            h = self.bn(h)
            self.bn.training = True
        else:
            h = self.bn(h)
        return self.out(torch.relu(h))


@pytest.mark.parametrize("sampler", [None, "layers", "functional"])
def test_batch_norm_left_in_train_mode_is_refused(sampler: str | None) -> None:
    from pacbound.certify.gaussian import prepare_network
    from pacbound.certify.gaussian_options import GaussianOptions

    torch.manual_seed(0)
    model = _TestTimeBatchStats()
    model.eval()
    x = torch.randn(64, 6) * 3 + 1
    options = GaussianOptions(sampler=None if sampler is None else Sampler(sampler), batch_size=32)
    try:
        net, _ = prepare_network(
            model,
            x,
            options=options,
            fixed_buffers=dict(_TestTimeBatchStats().named_buffers()),
            device=torch.device("cpu"),
        )
    except InvalidInputError:
        return
    net.set_mode("mean")
    with torch.no_grad():
        assert torch.allclose(net(x[:32]), model(x[:32]), atol=1e-5), (
            "certified the BatchNorm's running-statistics affine map; the model normalizes "
            "by batch statistics"
        )


# Hole 5 (compression): the decoded model is evaluated in batches with only the determinism
# check; a decoded model that normalizes by batch statistics (a BatchNorm kept in train mode
# by the architecture's train(), momentum 0) mixes examples, so its counted errors are not
# those of a per-example classifier. The Gaussian path probes batch independence; the
# compression path certifies it.

TTBN_MODULE = """
import torch
from torch import nn


class TTBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8, momentum=0.0)
        self.out = nn.Linear(8, 2)

    def train(self, mode=True):
        super().train(mode)
        self.bn.training = True
        return self

    def forward(self, x):
        h = self.fc(x)
        if x.shape[0] == 1:
            self.bn.training = False
            h = self.bn(h)
            self.bn.training = True
        else:
            h = self.bn(h)
        return self.out(torch.relu(h))


def ttbn():
    return TTBN()
"""


def test_compression_refuses_a_batch_mixing_decoded_model(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    from pathlib import Path

    import numpy as np
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from pacbound.cli.main import cli

    root = Path(str(tmp_path))
    (root / "review13_ttbn.py").write_text(TTBN_MODULE)
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (300,), generator=gen)
    x = torch.randn(300, 6, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
    torch.manual_seed(0)
    model = importlib.import_module("review13_ttbn").ttbn().eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "ttbn.safetensors"))
    args = ["certify", str(root / "ttbn.safetensors"), "--method", "quantize", "--levels", "2,4"]
    args += ["--arch", "review13_ttbn:ttbn", "--data", str(root / "train.npz"), "--quiet"]
    result = CliRunner().invoke(cli, [*args, "-o", str(root / "ttbn.json")])
    assert result.exit_code == 3, "certified a batch-mixing decoded model: " + result.output[-300:]

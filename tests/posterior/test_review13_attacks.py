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

"""The layer-sampler registry: which modules have an exact per-example sampler (MATH.md §10).

A certificate's Monte-Carlo risk needs, for every example, an independent draw of the whole
weight vector. ``--sampler layers`` (:attr:`~pacbound.posterior.network.Sampler.LAYERS`)
replaces every module that holds parameters by the Gaussian layer registered for its
**exact** type in :data:`LAYER_SAMPLERS`, when that entry applies to the module
(:meth:`LayerSampler.refusals` is empty). The rule, for every entry:

* the module's type is the registered type itself (a subclass may change ``forward``);
* it has no forward hooks (they would rewrite what the Gaussian layer computes);
* it holds no parameters beyond the ones the Gaussian layer draws (``weight``, ``bias``);
* it uses no setting the Gaussian layer does not implement (the entry's ``unsupported``:
  e.g. a padding mode other than zeros for a convolution).

Any other module that holds parameters is refused by the layer sampler; the generic exact
path, ``--sampler functional`` (:class:`~pacbound.posterior.functional.FunctionalGaussian`:
``torch.func.vmap`` over ``functional_call`` with per-example parameters), covers every
parameter of any module.

Adding an exact sampler for a new layer type (e.g. ``nn.Bilinear``) is one
:class:`~pacbound.posterior.layers.GaussianModule` subclass that draws its weights per
example, and one entry in :data:`LAYER_SAMPLERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pacbound.posterior.layers import GaussianLinear, GaussianModule
from pacbound.posterior.layers_affine import (
    GaussianChannelAffine,
    GaussianGroupNorm,
    GaussianLayerNorm,
)
from pacbound.posterior.layers_attention import GaussianMultiheadAttention, attention_unsupported
from pacbound.posterior.layers_conv import GaussianConv
from pacbound.posterior.layers_embedding import GaussianEmbedding
from pacbound.posterior.normalization import ChannelAffine, altered_behaviour


def _no_settings(module: nn.Module) -> list[str]:
    return []


@dataclass(frozen=True)
class LayerSampler:
    """The exact per-example sampler of one module type and when it applies."""

    #: builds the Gaussian layer from the module and the initial log σ
    layer: Callable[[Any, float], GaussianModule]
    #: how it draws per example (one line, for documentation)
    draws: str
    #: the parameters the Gaussian layer draws; any other parameter refuses the module
    parameters: frozenset[str] = frozenset({"weight", "bias"})
    #: the module's settings the Gaussian layer does not implement (empty: none)
    unsupported: Callable[[nn.Module], list[str]] = _no_settings
    #: child modules whose parameters the Gaussian layer draws as its own (e.g. the
    #: ``out_proj`` of ``nn.MultiheadAttention``): they get no sampler of their own
    children: frozenset[str] = frozenset()

    def refusals(self, module: nn.Module) -> list[str]:
        """Why the Gaussian layer would not compute as ``module`` (empty: it applies)."""
        why = altered_behaviour(module)
        extra = sorted(set(module._parameters) - self.parameters)
        if extra:
            why.append(f"extra parameters {', '.join(extra)}")
        for name in sorted(self.children):
            child = module._modules.get(name)
            why += [f"{name}: {w}" for w in altered_behaviour(child)] if child is not None else []
        return why + self.unsupported(module)


def _zero_padding_only(module: nn.Module) -> list[str]:
    mode = getattr(module, "padding_mode", "zeros")
    return [] if mode == "zeros" else [f"padding_mode {mode!r}"]


def _no_max_norm(module: nn.Module) -> list[str]:
    # max_norm renormalizes the looked-up rows of the table in place during forward
    return [] if getattr(module, "max_norm", None) is None else ["max_norm (rewrites the table)"]


_CONV_DRAWS = "per-example kernels applied as one grouped convolution (groups × examples)"
_AFFINE_DRAWS = "one vector per example, broadcast over the example's positions"

#: The registry: module type → its exact per-example sampler.
LAYER_SAMPLERS: dict[type[nn.Module], LayerSampler] = {
    nn.Linear: LayerSampler(
        GaussianLinear,
        "local reparameterization on (batch, features) input; one weight matrix per "
        "example, shared by all its positions, on (batch, …, features) input",
    ),
    nn.Conv2d: LayerSampler(GaussianConv, _CONV_DRAWS, unsupported=_zero_padding_only),
    nn.Conv1d: LayerSampler(GaussianConv, _CONV_DRAWS, unsupported=_zero_padding_only),
    nn.Conv3d: LayerSampler(GaussianConv, _CONV_DRAWS, unsupported=_zero_padding_only),
    nn.Embedding: LayerSampler(
        GaussianEmbedding,
        "one draw per distinct row an example looks up",
        parameters=frozenset({"weight"}),
        unsupported=_no_max_norm,
    ),
    nn.LayerNorm: LayerSampler(GaussianLayerNorm, _AFFINE_DRAWS),
    nn.GroupNorm: LayerSampler(GaussianGroupNorm, _AFFINE_DRAWS),
    ChannelAffine: LayerSampler(
        GaussianChannelAffine, _AFFINE_DRAWS, parameters=frozenset({"scale", "shift"})
    ),
    nn.MultiheadAttention: LayerSampler(
        GaussianMultiheadAttention,
        "one draw of the in- and out-projections per example, shared by all its positions "
        "(batched matmuls)",
        parameters=frozenset(
            {"in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"}
        ),
        unsupported=attention_unsupported,
        children=frozenset({"out_proj"}),
    ),
}


def layer_sampler(module: nn.Module) -> LayerSampler | None:
    """The sampler registered for the module's exact type (``None``: there is none)."""
    return LAYER_SAMPLERS.get(type(module))


def supported_types(separator: str) -> str:
    """The registered module types, e.g. ``"nn.Linear, nn.Conv2d, …"`` for ``", "``."""
    return separator.join(
        f"nn.{t.__name__}" if t.__module__.startswith("torch.") else t.__name__
        for t in LAYER_SAMPLERS
    )


def _holds_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def covered_children(model: nn.Module) -> set[str]:
    """Names of the child modules whose parameters their parent's sampler draws."""
    covered = set()
    for name, mod in model.named_modules():
        sampler = layer_sampler(mod)
        if sampler is not None:
            covered |= {f"{name}.{c}" if name else c for c in sampler.children}
    return covered


def unsupported_modules(model: nn.Module) -> list[str]:
    """``"name (Type)"`` of every module that holds parameters but has no layer sampler
    (nor is a child whose parameters its parent's sampler draws)."""
    covered = covered_children(model)
    return sorted(
        {
            f"{name or '<root>'} ({type(mod).__name__})"
            for name, mod in model.named_modules()
            if layer_sampler(mod) is None and _holds_parameters(mod) and name not in covered
        }
    )


def altered_modules(model: nn.Module) -> list[str]:
    """``"name (why)"`` for every module of a registered type its sampler does not apply to."""
    out = []
    for name, mod in model.named_modules():
        sampler = layer_sampler(mod)
        if sampler is not None:
            out += [f"{name} ({why})" for why in sampler.refusals(mod)]
    return out


def gaussian_layers(model: nn.Module, log_sigma_init: float) -> dict[str, GaussianModule]:
    """The Gaussian layer of every module of ``model`` that has a sampler, by module name
    (in ``named_modules`` order); each knows its name as ``layer_name``."""
    layers: dict[str, GaussianModule] = {}
    covered = covered_children(model)
    for name, mod in model.named_modules():
        sampler = layer_sampler(mod)
        if (
            sampler is not None and _holds_parameters(mod) and name not in covered
        ):  # e.g. not LayerNorm(affine=False)
            layer = sampler.layer(mod, log_sigma_init)
            layer.layer_name = name
            layers[name] = layer
    return layers

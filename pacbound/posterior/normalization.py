"""Eval-mode BatchNorm as a per-channel affine map covered by the posterior (MATH.md §10).

In eval mode ``nn.BatchNorm{1,2,3}d`` with running statistics computes x ↦ a·x + c per
channel, with a = γ/√(v + ε) and c = β − a·m. The running statistics (m, v) are estimated
from the training data, so they cannot be fixed values of the hypothesis; instead the
certificate puts its posterior on (a, c): :func:`to_channel_affine` replaces every such
module by a :class:`ChannelAffine` (parameters ``scale`` = a and ``shift`` = c, no buffers)
**before** the stochastic network is built, in the model and in the prior's source alike
(:func:`affine_state` for an ``--init`` state, :func:`to_channel_affine` of the data prior
trained on S_prior), so the prior mean is (a₀, c₀) from data-independent values (a fresh
BatchNorm: a₀ = γ₀/√(1 + ε), c₀ = β₀) or from S_prior only, and the checkpoint's running
statistics enter only through the posterior mean, which may depend on S freely.

A BatchNorm without running statistics normalizes each batch by its own statistics even in
eval mode (examples mix within a batch): it is refused, naming the module.
:func:`normalization_treatment` says, per normalization module, how it was treated (the
report's ``results.posterior.normalization``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pacbound.errors import InvalidInputError

#: The module types replaced by a :class:`ChannelAffine` (exact types: a subclass may
#: change ``forward`` and stays itself).
BATCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,  # in eval mode the same map (no synchronisation)
)

#: Normalization types with an elementwise affine (their weight and bias are ordinary
#: parameters covered by the posterior; without affine they hold no parameters).
ELEMENTWISE_NORMS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    ELEMENTWISE_NORMS += (nn.RMSNorm,)

#: Every module type the report lists under ``results.posterior.normalization``.
NORMALIZATIONS: tuple[type[nn.Module], ...] = (*ELEMENTWISE_NORMS, _BatchNorm)

BATCH_NORM_TREATMENT = "per-channel affine a, c covered by the posterior; {prior}"
ELEMENTWISE_TREATMENT = "elementwise affine covered by the posterior"
NO_PARAMETERS = "no parameters"


class ChannelAffine(nn.Module):
    """x ↦ scale·x + shift per channel (dimension 1 of a (N, C, …) input): eval-mode
    BatchNorm with its statistics folded into ``scale`` and ``shift`` (shape (C,))."""

    def __init__(self, num_channels: int, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_channels, dtype=dtype))
        self.shift = nn.Parameter(torch.zeros(num_channels, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        view = (1, -1, *([1] * (x.dim() - 2)))
        return x * self.scale.view(view) + self.shift.view(view)

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}"


def is_batch_norm(module: nn.Module) -> bool:
    """An exact ``nn.BatchNorm{1,2,3}d`` (the types :func:`to_channel_affine` replaces)."""
    return type(module) in BATCH_NORMS


def batch_norm_modules(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """``(name, module)`` of every BatchNorm that :func:`to_channel_affine` replaces;
    refuses one without running statistics (batch statistics mix examples) or with
    forward hooks (the affine module would drop them)."""
    found: list[tuple[str, _BatchNorm]] = []
    for name, mod in model.named_modules():
        if not is_batch_norm(mod) or not isinstance(mod, _BatchNorm):
            continue
        where = f"{name or '<root>'} ({type(mod).__name__})"
        if mod.running_mean is None or mod.running_var is None:
            raise InvalidInputError(
                f"BatchNorm {where} keeps no running statistics (track_running_stats=False): "
                "it normalizes each batch by that batch's statistics even in eval mode, so "
                "one example's output depends on the others in its batch (batch mixing). "
                "Train it with running statistics, or replace it (e.g. by GroupNorm)"
            )
        altered = altered_behaviour(mod)
        if altered:
            raise InvalidInputError(
                f"BatchNorm {where} may not compute as a BatchNorm ({'; '.join(altered)}); its "
                "per-channel affine form would drop that. Remove them before certifying"
            )
        found.append((name, mod))
    return found


#: Methods a module's forward never runs: replacing them on an instance is no alteration.
NOT_COMPUTING = frozenset({"reset_parameters", "extra_repr", "train", "eval", "_get_name"})


def altered_behaviour(module: nn.Module) -> list[str]:
    """Why ``module`` may not compute as its class's code says (empty: nothing found):
    forward hooks of its own or global ones (``register_module_forward_hook``), and methods
    replaced on the instance (``module.forward = …``). A layer replaced by its Gaussian or
    affine form would drop them."""
    why = []
    if module._forward_hooks or module._forward_pre_hooks:
        why.append("forward hooks")
    if _global_forward_hooks():
        why.append("global module forward hooks (register_module_forward_hook)")
    replaced = sorted(
        name
        for name, value in vars(module).items()
        if callable(value)
        and callable(getattr(type(module), name, None))
        and name not in NOT_COMPUTING
    )
    if replaced:
        why.append(f"{', '.join(replaced)} replaced on the instance")
    return why


def _global_forward_hooks() -> bool:
    from torch.nn.modules import module as torch_module

    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


def affine_values(
    weight: Tensor | None, bias: Tensor | None, mean: Tensor, var: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """(a, c) = (γ/√(v + ε), β − a·m), computed in float64 and returned in ``mean``'s
    floating dtype (γ = 1, β = 0 for a BatchNorm without affine)."""
    dtype = mean.dtype if mean.is_floating_point() else torch.float32
    m, v = mean.detach().double(), var.detach().double()
    gamma = torch.ones_like(m) if weight is None else weight.detach().double().to(m.device)
    beta = torch.zeros_like(m) if bias is None else bias.detach().double().to(m.device)
    a = gamma / torch.sqrt(v + eps)
    c = beta - a * m
    return a.to(dtype), c.to(dtype)


def _channel_affine(bn: _BatchNorm) -> ChannelAffine:
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None  # batch_norm_modules refused the others
    dtype = bn.weight.dtype if bn.weight is not None else mean.dtype
    a, c = affine_values(bn.weight, bn.bias, mean, var, bn.eps)
    module = ChannelAffine(int(mean.numel()), dtype=dtype).to(mean.device)
    with torch.no_grad():
        module.scale.copy_(a)
        module.shift.copy_(c)
    module.train(bn.training)
    return module


def to_channel_affine(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every eval-mode BatchNorm replaced by its
    :class:`ChannelAffine` (same module name: its parameters are ``NAME.scale`` and
    ``NAME.shift``); ``model`` itself when it has none (nothing copied or changed)."""
    found = batch_norm_modules(model)
    if not found:
        return model
    if any(name == "" for name, _ in found):
        raise InvalidInputError("the model itself is a BatchNorm; wrap it in nn.Sequential")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = copy.deepcopy(model)
    # A BatchNorm reachable under two names (called twice) becomes one shared ChannelAffine:
    # one coordinate of the hypothesis, like any reused module.
    replaced: dict[int, ChannelAffine] = {}
    for name, bn in list(out.named_modules(remove_duplicate=False)):
        if not is_batch_norm(bn) or not isinstance(bn, _BatchNorm):
            continue
        if id(bn) not in replaced:
            replaced[id(bn)] = _channel_affine(bn)
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, replaced[id(bn)])
    return out


def check_affine_form(model: nn.Module, affine: nn.Module, x: Tensor) -> None:
    """Refuse a model whose forward cannot run with its BatchNorm layers as
    :class:`ChannelAffine` (``affine`` = :func:`to_channel_affine` of ``model``): it reads a
    BatchNorm's statistics or parameters outside that BatchNorm's own call."""
    if affine is model:
        return
    try:
        with torch.no_grad():
            affine.eval()(x)
    except Exception as exc:
        names = short_names([name for name, _ in batch_norm_modules(model)])
        raise InvalidInputError(
            f"the model's forward fails with its BatchNorm layers ({names}) as per-channel "
            f"affine maps ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): it reads "
            "a BatchNorm's statistics or parameters outside the BatchNorm's own call, which "
            "the certificate cannot cover. Use the BatchNorm only by calling it"
        ) from None


def short_names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def affine_state(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` (e.g. the ``--init`` weights, keyed like ``model``'s state dict) with every
    replaced BatchNorm's entries turned into its ``scale`` and ``shift`` (a₀, c₀). Running
    statistics the state does not hold take a fresh BatchNorm's (m = 0, v = 1): then
    a₀ = γ₀/√(1 + ε), c₀ = β₀."""
    out = dict(state)
    for name, bn in batch_norm_modules(model):
        keys = {k: f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var")}
        fresh_mean = torch.zeros(bn.num_features, dtype=torch.float64)
        mean = state.get(keys["running_mean"], fresh_mean)
        var = state.get(keys["running_var"], torch.ones_like(fresh_mean))
        weight = state.get(keys["weight"]) if bn.affine else None
        bias = state.get(keys["bias"]) if bn.affine else None
        if bn.affine and (weight is None or bias is None):
            raise InvalidInputError(
                f"the initial state has no {keys['weight']} / {keys['bias']} for BatchNorm "
                f"{name}: the prior mean of its affine form needs them",
                param="--init",
            )
        a, c = affine_values(weight, bias, mean, var, bn.eps)
        dtype = bn.weight.dtype if bn.weight is not None else torch.get_default_dtype()
        if bn.running_mean is not None:
            dtype = bn.running_mean.dtype if bn.weight is None else dtype
        for key in (*keys.values(), f"{name}.num_batches_tracked"):
            out.pop(key, None)
        out[f"{name}.scale"], out[f"{name}.shift"] = a.to(dtype), c.to(dtype)
    return out


def reset_batch_norm_statistics(model: nn.Module, state: Mapping[str, Tensor] | None) -> None:
    """Set every BatchNorm's running statistics to the data-independent ``state``'s (the
    ``--init`` file) or, where it holds none, to a fresh BatchNorm's: the start of a prior
    trained on S_prior must not carry the checkpoint's statistics (they have seen S_bound)."""
    for name, bn in model.named_modules():
        if not isinstance(bn, _BatchNorm) or bn.running_mean is None:
            continue
        bn.reset_running_stats()
        if state is None:
            continue
        with torch.no_grad():
            for key, buf in bn.named_buffers(recurse=False):
                value = state.get(f"{name}.{key}")
                if value is not None:
                    buf.copy_(value.to(buf.device, buf.dtype))


def normalization_treatment(model: nn.Module, prior: str) -> list[dict[str, str]]:
    """One entry per normalization module of ``model`` (the checkpoint, before
    :func:`to_channel_affine`): its name, type and how the certificate treats it.
    ``prior`` says where a BatchNorm's prior mean (a₀, c₀) comes from."""
    entries = []
    for name, mod in model.named_modules():
        if is_batch_norm(mod):
            treatment = BATCH_NORM_TREATMENT.format(prior=prior)
        elif isinstance(mod, NORMALIZATIONS):
            has_params = any(True for _ in mod.parameters(recurse=False))
            treatment = ELEMENTWISE_TREATMENT if has_params else NO_PARAMETERS
        else:
            continue
        entries.append(
            {"module": name or "<root>", "type": type(mod).__name__, "treatment": treatment}
        )
    return entries


def refuse_state_changes(model: nn.Module, x: Tensor) -> None:
    """Run one eval-mode forward of ``model`` on ``x`` and refuse it if it changed state:
    a floating-point buffer written (BatchNorm left in train mode inside forward, a cache)
    or the train/eval mode of a module that holds buffers flipped (a BatchNorm with
    momentum 0 in train mode normalizes by batch statistics without changing its buffers).
    Integer counters may tick. Names the module. ``model`` is restored to eval mode and its
    floating-point buffers to their values before the call."""
    model.eval()
    before = {n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()}
    modes = {name: mod.training for name, mod in model.named_modules()}
    with torch.no_grad():
        model(x)
    owners = dict(model.named_modules())
    changed = []
    for name, buf in model.named_buffers():
        old = before.get(name)
        if old is None or _same(old, buf):
            continue
        module = name.rpartition(".")[0]
        changed.append(f"{module or '<root>'} ({type(owners[module]).__name__}: buffer {name})")
    flipped = [  # a stateless module's mode (dropout) is the determinism check's concern
        f"{name or '<root>'} ({type(mod).__name__}: set to train mode)"
        for name, mod in model.named_modules()
        if mod.training != modes.get(name, False) and any(True for _ in mod.buffers())
    ]
    model.eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name in before:
                buf.copy_(before[name])
    if changed or flipped:
        shown = ", ".join((changed + flipped)[:4])
        raise InvalidInputError(
            f"the model's forward changes its state in eval mode: {shown}. A forward that "
            "updates statistics or caches (e.g. BatchNorm switched to train mode inside "
            "forward) computes with data-derived state the bound does not pay for, and the "
            "certified classifier would not be a fixed function. Keep forward free of state "
            "updates"
        )


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(
        torch.equal(torch.nan_to_num(a), torch.nan_to_num(b.to(a.device)))
        and torch.equal(torch.isnan(a), torch.isnan(b.to(a.device)))
    )

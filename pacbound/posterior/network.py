"""A stochastic copy of a network: every parameter gets a Gaussian posterior.

:func:`build_stochastic_network` copies the model and puts a diagonal Gaussian on every
parameter, enforcing the invariant every certificate rests on (MATH.md §4, §10): **every
tensor the network computes with is covered by the posterior (and its KL) or is identical to
a data-independent value fixed before the data**.

How per-example draws are made is the :class:`Sampler`:

* ``Sampler.LAYERS``: every module that holds parameters is replaced by the Gaussian layer of
  the layer-sampler registry (:mod:`pacbound.posterior.samplers`, which also says when an
  entry applies); any other parameter, tie or reused layer is refused
  (:func:`~pacbound.posterior.static_checks.check_structure`). At run time
  (:class:`~pacbound.posterior.layers.ForwardGuard`) each layer is called at most once per
  forward pass and sees the batch as its leading dimension.
* ``Sampler.FUNCTIONAL``: the generic path, every parameter of any module at once
  (:class:`~pacbound.posterior.functional.FunctionalGaussian`); ties and reuse are drawn once
  per example by construction.

For both, every buffer must equal its data-independent value and no module may hold hidden
tensors (:mod:`pacbound.posterior.static_checks`), and
:meth:`StochasticNetwork.check_coverage` runs the probe forward passes that refuse any use of
a parameter outside its layer and any mixing of examples within a batch
(:mod:`pacbound.posterior.probe`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.io.architectures import check_real_parameters
from pacbound.posterior.functional import FunctionalGaussian
from pacbound.posterior.layers import (
    WEIGHT_COPIES,
    ForwardGuard,
    GaussianModule,
    SampleMode,
    default_max_memory,
    format_bytes,
)
from pacbound.posterior.probe import probe_network
from pacbound.posterior.samplers import gaussian_layers
from pacbound.posterior.static_checks import (
    check_buffers,
    check_structure,
    layer_sampler_obstacles,
    refuse_hidden_tensors,
    same_value,
    short_list,
)
from pacbound.posterior.streams import DrawKey, DrawStream


@dataclass(frozen=True)
class ParameterSlot:
    """Where one original parameter lives in the stochastic network."""

    name: str  # the original parameter name, e.g. "0.weight"
    module: GaussianModule
    attr: str  # "weight" or "bias"

    @property
    def mu(self) -> nn.Parameter:
        return getattr(self.module, f"{self.attr}_mu")

    @property
    def log_sigma(self) -> nn.Parameter:
        return getattr(self.module, f"{self.attr}_log_sigma")


class StochasticNetwork(nn.Module):
    """The model with Gaussian weights; ``slots`` follow the model's parameter order."""

    def __init__(self, net: nn.Module, slots: list[ParameterSlot]) -> None:
        super().__init__()
        self.net = net
        self._slots = slots
        self._guard = ForwardGuard()
        for module in self.gaussian_modules():
            module.guard = self._guard
        for slot in slots:  # the names that key each tensor's noise
            slot.module.set_slot_name(slot.attr, slot.name)
        self._buffers_at_build = {n: b.detach().clone() for n, b in net.named_buffers()}

    @property
    def slots(self) -> list[ParameterSlot]:
        return self._slots

    def forward(self, x: Tensor) -> Tensor:
        self._guard.start(int(x.shape[0]))
        modules = list(self.gaussian_modules())
        sampling = [(m, m.mode, m.generator, m.draw_key) for m in modules]
        # per-example draws without a key: one key for the whole pass, from the generator
        keyless = [m for m in modules if m.mode == "per_example" and m.draw_key is None]
        if keyless:
            fresh = DrawStream.from_generator(keyless[0].generator, "generator").next_pass()
            for module in keyless:
                module._call_key = fresh
        self._guard.running = True
        try:
            out = self.net(x)
        finally:
            self._guard.running = False
            for module in keyless:
                module._call_key = None
        for module, mode, generator, key in sampling:
            if module.mode != mode or module.generator is not generator or module.draw_key != key:
                raise InvalidInputError(
                    f"the model's forward changed how layer {module.layer_name!r} draws its "
                    "weights (its sampling mode or random stream): the certificate's draws "
                    "must be the ones pacbound makes"
                )
        return out

    def check_buffers_unchanged(self) -> None:
        """Refuse if fitting the posterior changed a floating-point buffer (e.g. a
        normalization layer's running statistics refitted to the data): the certificate
        would compute with state the KL does not pay for."""
        changed = [  # named with the type of the module that holds them
            f"{name} ({type(self.net.get_submodule(name.rpartition('.')[0])).__name__})"
            for name, buf in self.net.named_buffers()
            if buf.is_floating_point()  # a forward's own counters may tick
            and (
                name not in self._buffers_at_build
                or not same_value(buf, self._buffers_at_build[name])
            )
        ]
        if changed:
            raise InvalidInputError(
                f"fitting the posterior changed the model's buffers ({short_list(changed)}): they "
                "would be data-derived state the bound does not pay for. Keep buffers fixed "
                "in forward (eval-mode normalization), or certify with a compression method"
            )

    @property
    def guard(self) -> ForwardGuard:
        return self._guard

    def check_coverage(self, x: Tensor, *, batch_independence: bool = True) -> None:
        """The probe forward passes of :func:`pacbound.posterior.probe.probe_network` on
        ``x`` (a batch at the certification batch size, on the network's device)."""
        probe_network(self, x, batch_independence=batch_independence)

    def gaussian_modules(self) -> Iterator[GaussianModule]:
        for module in self.net.modules():
            if isinstance(module, GaussianModule):
                yield module

    def sampler_summary(self) -> dict[str, Any]:
        """What drew the per-example weights (``results.posterior.sampler``): ``path``
        ``"layers"`` with the number of layers per Gaussian layer class, or
        ``"functional"`` (the whole parameter vector per example)."""
        modules = list(self.gaussian_modules())
        if any(isinstance(m, FunctionalGaussian) for m in modules):
            return {"path": "functional"}
        counts: dict[str, int] = {}
        for m in modules:
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
        return {"path": "layers", "layers": dict(sorted(counts.items()))}

    def set_mode(self, mode: SampleMode, source: DrawKey | torch.Generator | None = None) -> None:
        """The sampling mode of every layer, and where its draws come from: a
        :class:`~pacbound.posterior.streams.DrawKey` (per-example draws of one pass, for a
        batch starting at ``key.first_example``), or a sequential generator (``"shared"``
        training draws; per-example draws then take one fresh key per forward pass)."""
        key = source if isinstance(source, DrawKey) else None
        generator = source if isinstance(source, torch.Generator) else None
        for module in self.gaussian_modules():
            module.mode = mode
            module.generator = generator
            module.draw_key = key

    def num_parameters(self) -> int:
        return sum(slot.mu.numel() for slot in self._slots)

    def set_log_sigma(self, value: float) -> None:
        with torch.no_grad():
            for slot in self._slots:
                slot.log_sigma.fill_(value)

    def mean_parameters(self) -> list[nn.Parameter]:
        return [slot.mu for slot in self._slots]

    def log_sigma_parameters(self) -> list[nn.Parameter]:
        return [slot.log_sigma for slot in self._slots]

    def state_for_saving(self) -> dict[str, Tensor]:
        """``{name}.mu`` and ``{name}.sigma`` for every original parameter (safetensors-ready)."""
        out: dict[str, Tensor] = {}
        for slot in self._slots:
            out[f"{slot.name}.mu"] = slot.mu.detach().cpu().contiguous()
            out[f"{slot.name}.sigma"] = torch.exp(slot.log_sigma.detach()).cpu().contiguous()
        return out


def _copy(model: nn.Module) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch's own deprecation notice when copying a torch.export program's module
            warnings.simplefilter("ignore", FutureWarning)
            return copy.deepcopy(model)
    except Exception as exc:  # e.g. a traced function held as an attribute
        raise InvalidInputError(
            f"the model cannot be copied to build the posterior ({type(exc).__name__}: "
            f"{str(exc)[:100]}); keep only modules, parameters and buffers on it"
        ) from None


def _functional_network(
    model: nn.Module, log_sigma_init: float, fixed_buffers: Mapping[str, Tensor] | None
) -> StochasticNetwork:
    """Every parameter of ``model`` covered by one :class:`FunctionalGaussian`."""
    refuse_hidden_tensors(model)
    check_buffers(model, fixed_buffers)
    if not any(True for _ in model.parameters()):
        raise InvalidInputError("the model has no parameters to put a posterior on")
    net = FunctionalGaussian(_copy(model), log_sigma_init)
    net.layer_name = "<model>"
    slots = [ParameterSlot(name, net, net.slot_attr(name)) for name in net.slot_names]
    stochastic = StochasticNetwork(net, slots)
    stochastic.eval()
    return stochastic


class Sampler(str, Enum):
    """How per-example weight draws are made (MATH.md §10).

    ``layers``: each module with an exact fast sampler in the registry
    (:data:`~pacbound.posterior.samplers.LAYER_SAMPLERS`: nn.Linear, nn.Conv1d/2d/3d,
    nn.Embedding, nn.LayerNorm, nn.GroupNorm, ChannelAffine, nn.MultiheadAttention) is replaced
    by its Gaussian layer; every other parameter, tie or reuse is refused. ``functional``:
    the whole parameter vector is drawn per example and each example is evaluated alone
    (``torch.func.vmap`` over ``functional_call``): any module, ties and reuse included, at
    memory ∝ examples × parameters
    (:class:`~pacbound.posterior.functional.FunctionalGaussian`).
    """

    LAYERS = "layers"
    FUNCTIONAL = "functional"


#: Examples the run-time part of ``--sampler auto`` probes the layers on.
AUTO_PROBE_EXAMPLES = 8


def auto_sampler(
    model: nn.Module, x: Tensor | None = None, *, batch_independence: bool = True
) -> Sampler:
    """``--sampler auto``: the layers when every parameter-holding module has an exact layer
    sampler that applies to it and nothing is tied or reused
    (:func:`~pacbound.posterior.static_checks.layer_sampler_obstacles` is empty), else the
    generic functional path. With inputs ``x``, also what only a forward pass shows: the
    layers are probed on a few of them (:meth:`StochasticNetwork.check_coverage`) and a
    refusal (a layer called twice, a weight read by a raw op outside its layer) sends the
    model to the functional path, which draws such uses once per example by construction.
    Buffers are not judged here: both paths check them against their reference later."""
    if layer_sampler_obstacles(model):
        return Sampler.FUNCTIONAL
    if x is None:
        return Sampler.LAYERS
    own = {name: buf for name, buf in model.named_buffers()}
    try:
        net = build_stochastic_network(model, fixed_buffers=own, sampler=Sampler.LAYERS)
        device = next((p.device for p in model.parameters()), x.device)
        net.to(device)
        net.check_coverage(
            x[:AUTO_PROBE_EXAMPLES].to(device), batch_independence=batch_independence
        )
    except Exception:
        # reads a replaced layer's attributes) sends the model to the generic path, which
        # runs its own checks and refuses what it cannot cover
        return Sampler.FUNCTIONAL
    return Sampler.LAYERS


def set_max_memory(network: StochasticNetwork, max_memory: int) -> None:
    """Give every layer of ``network`` the budget for its per-example weight tensors;
    refuses a budget too small for one example, naming the smallest budget that works
    (layers that draw whole weights per example on every input: convolutions, the
    functional sampler; a Linear on sequences checks its own need when it meets one)."""
    need, where = 0, ""
    for module in network.gaussian_modules():
        if module.budgeted:
            mu = next(p for n, p in module.named_parameters(recurse=False) if n.endswith("_mu"))
            size = WEIGHT_COPIES * module.per_example_elements() * mu.element_size()
            if size > need:
                need, where = size, module.layer_name
    if need > max_memory:
        raise InvalidInputError(
            f"--max-memory {format_bytes(max_memory)} is too small for one example's weight "
            f"draws (layer {where!r} needs {format_bytes(need)}); the smallest budget that "
            f"works is {format_bytes(need)} ({need} bytes)",
            param="--max-memory",
        )
    for module in network.gaussian_modules():
        module.max_memory = max_memory


def build_stochastic_network(
    model: nn.Module,
    *,
    log_sigma_init: float = -5.0,
    fixed_buffers: Mapping[str, Tensor] | None = None,
    sampler: Sampler = Sampler.LAYERS,
    max_memory: int | None = None,
) -> StochasticNetwork:
    """A stochastic copy of ``model`` with means at its current weights.

    ``fixed_buffers`` are the data-independent values of the model's buffers (from the
    ``--init`` file or a fresh build); every buffer must equal its value there. Raises
    :class:`InvalidInputError` naming the modules/tensors that break the invariant of the
    module docstring. Call :meth:`StochasticNetwork.check_coverage` on a few inputs before
    certifying: it catches uses of parameters that only a forward pass reveals.
    ``max_memory``: the bytes per-example weight tensors may take at once
    (:func:`set_max_memory`; default :func:`~pacbound.posterior.layers.default_max_memory`
    of the model's device).
    """
    check_real_parameters(model, "the model")
    if max_memory is None:
        device = next((p.device for p in model.parameters()), None)
        max_memory = default_max_memory(device)
    if sampler is Sampler.FUNCTIONAL:
        network = _functional_network(model, log_sigma_init, fixed_buffers)
        set_max_memory(network, max_memory)
        return network
    check_structure(model)
    check_buffers(model, fixed_buffers)
    net = _copy(model)
    replacements = gaussian_layers(net, log_sigma_init)
    for mod_name, new in replacements.items():
        if mod_name == "":
            raise InvalidInputError("the model itself is a single layer; wrap it in nn.Sequential")
        parent_name, _, child = mod_name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, new)
    slots: list[ParameterSlot] = []
    for param_name, _ in model.named_parameters():
        mod_name, _, attr = param_name.rpartition(".")
        while mod_name not in replacements:  # a covered child's tensor: ``out_proj_weight``
            mod_name, _, child = mod_name.rpartition(".")
            attr = f"{child}_{attr}"
        slots.append(ParameterSlot(param_name, replacements[mod_name], attr))
    stochastic = StochasticNetwork(net, slots)
    covered = {id(p) for slot in slots for p in (slot.mu, slot.log_sigma)}
    stray = [name for name, p in stochastic.named_parameters() if id(p) not in covered]
    if stray:  # a parameter the checks above missed must never stay a point mass
        raise InvalidInputError(f"parameters not covered by the posterior: {short_list(stray)}")
    set_max_memory(stochastic, max_memory)
    stochastic.eval()
    return stochastic

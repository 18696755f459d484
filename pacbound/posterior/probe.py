"""Probe forward passes that check what only running the model can show (MATH.md §10).

The static checks of :mod:`pacbound.posterior.network` see the module tree; a model's
``forward`` can still compute with tensors outside it, read a layer's weights with a raw op,
or mix examples. Before certifying, :func:`probe_network` runs a stochastic network on a batch
of real inputs at the certification batch size and refuses (``InvalidInputError``):

1. **data flow** (:class:`DataFlowProbe`, a ``TorchFunctionMode``): every tensor a torch op
   receives must be the input, a registered buffer (checked against its data-independent
   value), the output of an earlier op of the same pass (constants made in ``forward``
   included), or a posterior parameter used *inside its own layer*. A plain tensor attribute,
   a closure over one, or a layer's weight read through ``.parameters()`` elsewhere is
   refused: it would be a point mass (or stored data) that the KL does not pay for;
2. **noise locality**: changing the weight noise of one example (every layer's row ``j``)
   must leave the outputs of all other examples unchanged: otherwise a layer's rows are not
   examples (a transposed or reshaped batch) and the draws are not per-example draws;
3. **batch independence**: each example's output computed in the batch equals the output
   computed alone (elementwise, relative tolerance), so the model does not mix examples.

These are probes on the given inputs: the architecture's code is trusted to be fixed before
the data (it is part of the prior), and the probes catch the ways honest code breaks that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pacbound.errors import InvalidInputError

if TYPE_CHECKING:
    from pacbound.posterior.network import StochasticNetwork

#: Relative / absolute (× output scale) tolerance of the batch-independence comparison.
BATCH_RTOL = 1e-4
BATCH_ATOL = 1e-6


def _tensors(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[Tensor]:
    out: list[Tensor] = []
    stack: list[Any] = [*args, *kwargs.values()]
    while stack:
        item = stack.pop()
        if isinstance(item, Tensor):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return out


class DataFlowProbe(TorchFunctionMode):
    """Refuses any tensor an op receives that is not accounted for (see the module doc)."""

    def __init__(self, network: StochasticNetwork, x: Tensor) -> None:
        super().__init__()
        self.allowed: dict[int, Tensor] = {id(x): x}
        for buf in network.buffers():
            self.allowed[id(buf)] = buf
        self.owner: dict[int, str] = {}
        for module in network.gaussian_modules():
            for p in module.parameters(recurse=False):
                self.owner[id(p)] = module.layer_name
        self.active: list[str] = []
        self.guard = network.guard

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if self.guard.opaque:
            return func(*args, **kwargs)
        for t in _tensors(args, kwargs):
            self._check(t)
        out = func(*args, **kwargs)
        for t in _tensors((out,), {}):
            self.allowed[id(t)] = t
        return out

    def _check(self, t: Tensor) -> None:
        owner = self.owner.get(id(t))
        if owner is not None:
            if not self.active or self.active[-1] != owner:
                raise InvalidInputError(
                    f"the model uses a weight of layer {owner!r} outside that layer's forward "
                    "(e.g. through .parameters() or a functional call): every use of a weight "
                    "must go through its module to be drawn from the posterior. Certify with "
                    "a compression method"
                )
            return
        if id(t) not in self.allowed and not any(t is v for v in self.guard.vouched):
            raise InvalidInputError(
                f"the model computes with a tensor of shape {list(t.shape)} that is neither "
                "its input, a registered buffer, nor computed in forward (a plain tensor "
                "attribute, a closure, a tensor held outside the module tree): it is part of "
                "the hypothesis and could hold data. Register it as a buffer, or certify with "
                "a compression method"
            )

    def track_layers(self, network: StochasticNetwork) -> list[Any]:
        """Hooks that keep :attr:`active` (the Gaussian layer whose forward is running)."""
        handles = []
        for module in network.gaussian_modules():

            def pre(mod: nn.Module, _inputs: Any, name: str = module.layer_name) -> None:
                self.active.append(name)

            def post(mod: nn.Module, _inputs: Any, _out: Any) -> None:
                self.active.pop()

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        return handles


def _run(network: StochasticNetwork, x: Tensor, seed: int, perturb: int | None) -> Tensor:
    network.set_mode("per_example", torch.Generator(device=x.device).manual_seed(seed))
    network.guard.perturb_row = perturb
    try:
        return network(x)
    finally:
        network.guard.perturb_row = None


def _noise_locality(network: StochasticNetwork, x: Tensor) -> None:
    if x.shape[0] < 2:
        return
    base = _run(network, x, 0, None)
    changed = _run(network, x, 0, 0)
    if not torch.equal(base[1:], changed[1:]):
        raise InvalidInputError(
            "changing one example's weight draw changes the outputs of other examples: some "
            "layer's rows are not the examples (a transposed or reshaped batch), so its draws "
            "would not be per-example draws. Keep the batch as the first dimension of every "
            "layer's input, or certify with a compression method"
        )


def _batch_independence(network: StochasticNetwork, x: Tensor) -> None:
    network.set_mode("mean")
    together = network(x)
    rows = sorted({0, x.shape[0] // 2, x.shape[0] - 1})
    try:
        alone = torch.cat([network(x[i : i + 1]) for i in rows])
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(
            f"the model cannot evaluate a single example ({type(exc).__name__}: "
            f"{str(exc)[:120]}); per-example certificates need per-example predictions"
        ) from None
    picked = together[rows]
    scale = float(alone.abs().max()) if alone.numel() else 1.0
    if picked.shape != alone.shape or not torch.allclose(
        picked, alone, rtol=BATCH_RTOL, atol=BATCH_ATOL * (1.0 + scale)
    ):
        raise InvalidInputError(
            "the model's output for an example depends on the other examples in its batch "
            "(batch-level mixing, e.g. train-mode normalization or attention across the "
            "batch): per-example certificates need per-example predictions"
        )


@torch.no_grad()
def probe_network(
    network: StochasticNetwork, x: Tensor, *, batch_independence: bool = True
) -> None:
    """Run the probes of the module doc on ``x`` (a batch at the certification batch size,
    on the network's device). ``batch_independence=False`` skips the comparisons that need a
    deterministic forward (for models that are random by design)."""
    was_training = network.training
    network.eval()
    flow = DataFlowProbe(network, x)
    handles = flow.track_layers(network)
    checks: list[Callable[[], Any]] = [
        lambda: _run(network, x[: min(2, x.shape[0])], 0, None),
        lambda: _run(network, x, 0, None),
    ]
    if batch_independence:
        checks += [lambda: _noise_locality(network, x), lambda: _batch_independence(network, x)]
    try:
        with flow:
            for check in checks:
                check()
    finally:
        for handle in handles:
            handle.remove()
        network.set_mode("per_example")
        network.train(was_training)

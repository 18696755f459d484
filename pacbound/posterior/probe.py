"""Probe forward passes that check what only running the model can show (MATH.md §10).

The static checks of :mod:`pacbound.posterior.static_checks` see the module tree; a model's
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

import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from pacbound.errors import InvalidInputError, NumericalError
from pacbound.posterior.layers import ForwardGuard, GaussianModule, SampleMode
from pacbound.posterior.static_checks import MAX_PYTHON_NUMBERS, python_numbers
from pacbound.posterior.streams import DrawKey


class StochasticForward(Protocol):
    """What the probes use of a stochastic network
    (:class:`~pacbound.posterior.network.StochasticNetwork`, which runs them through
    ``check_coverage``)."""

    training: bool

    @property
    def guard(self) -> ForwardGuard: ...

    def __call__(self, x: Tensor) -> Tensor: ...

    def buffers(self, recurse: bool = ...) -> Iterator[Tensor]: ...

    def gaussian_modules(self) -> Iterator[GaussianModule]: ...

    def set_mode(
        self, mode: SampleMode, source: DrawKey | torch.Generator | None = None
    ) -> None: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = ...) -> Any: ...


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


#: Functions that build a tensor from Python or NumPy data; more values than
#: :data:`~pacbound.posterior.static_checks.MAX_PYTHON_NUMBERS` in forward is refused.
_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray, torch.from_numpy, Tensor.new_tensor}


def _values(data: Any) -> int:
    if isinstance(data, np.ndarray):
        return int(data.size)
    if isinstance(data, (list, tuple)):
        return python_numbers(data)
    return 1


class DataFlowProbe(TorchFunctionMode):
    """Refuses any tensor an op receives that is not accounted for (see the module doc).

    Known tensors are held weakly (a freed intermediate leaves the table), so the probe
    costs no more memory than the forward pass itself. Ops whose result holds no tensor
    (``.device``, ``.shape``, ``.dtype``…) only read metadata and are not checked.
    """

    def __init__(self, network: StochasticForward, x: Tensor) -> None:
        super().__init__()
        self.allowed: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()
        self.allowed[id(x)] = x
        for buf in network.buffers():
            self.allowed[id(buf)] = buf
        self.owner: dict[int, str] = {}
        for module in network.gaussian_modules():
            for p in module.parameters(recurse=False):
                self.owner[id(p)] = module.layer_name
        self.guard = network.guard

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if self.guard.opaque:
            return func(*args, **kwargs)
        if func in _FROM_DATA:
            data = args[1] if func is Tensor.new_tensor else (args[0] if args else None)
            if _values(data) > MAX_PYTHON_NUMBERS:
                raise InvalidInputError(
                    f"the model builds a tensor from {_values(data)} Python/NumPy values in "
                    "forward: they are part of the hypothesis and could hold data. Register "
                    "them as a buffer (checked against the --init file or a fresh build)"
                )
        out = func(*args, **kwargs)
        results = _tensors((out,), {})
        if results or out is None:  # metadata reads (device, shape…) return other values;
            for t in _tensors(args, kwargs):  # None: __setitem__ and other in-place writes
                self._check(t)
        for t in results:
            self.allowed[id(t)] = t
        return out

    def _check(self, t: Tensor) -> None:
        owner = self.owner.get(id(t))
        active = self.guard.active
        if owner is not None:
            if not active or active[-1] != owner:
                raise InvalidInputError(
                    f"the model uses a weight of layer {owner!r} outside that layer's forward "
                    "(e.g. through .parameters() or a functional call): every use of a weight "
                    "must go through its module to be drawn from the posterior. Use --sampler "
                    "functional, or certify with a compression method"
                )
            return
        if self.allowed.get(id(t)) is not t and not any(t is v for v in self.guard.vouched):
            raise InvalidInputError(
                f"the model computes with a tensor of shape {list(t.shape)} that is neither "
                "its input, a registered buffer, nor computed in forward (a plain tensor "
                "attribute, a closure, a tensor held outside the module tree): it is part of "
                "the hypothesis and could hold data. Register it as a buffer, or certify with "
                "a compression method"
            )


def _run(network: StochasticForward, x: Tensor, seed: int, perturb: Tensor | None) -> Tensor:
    network.set_mode("per_example", DrawKey(seed, "probe"))
    network.guard.perturb_rows = perturb
    try:
        return network(x)
    finally:
        network.guard.perturb_rows = None


def _mean_pass(network: StochasticForward, x: Tensor) -> Tensor:
    network.set_mode("mean")
    return network(x)


#: Rows of the batch the noise-locality probe checks (2·⌈log₂ rows⌉ passes).
LOCALITY_ROWS = 256


def _noise_locality(network: StochasticForward, x: Tensor) -> None:
    """For every bit k of the row index: perturb the noise of the rows whose bit k is 1
    (then 0) and require every other row's output to stay the same. Any dependence of one
    row's output on another row's draw differs in some bit, so it is caught."""
    x = x[: min(LOCALITY_ROWS, int(x.shape[0]))]
    rows = int(x.shape[0])
    if rows < 2:
        return
    base = _run(network, x, 0, None)
    index = torch.arange(rows)
    for bit in range((rows - 1).bit_length()):
        ones = (index >> bit) & 1 == 1
        for perturbed in (ones, ~ones):
            changed = _run(network, x, 0, perturbed)
            if not torch.equal(base[~perturbed], changed[~perturbed]):
                raise InvalidInputError(
                    "changing some examples' weight draws changes the outputs of other "
                    "examples: some layer's rows are not the examples (a transposed, rolled "
                    "or reshaped batch), so its draws would not be per-example draws. Keep the "
                    "batch as the first dimension of every layer's input, or certify with a "
                    "compression method"
                )


def _tolerance(out: Tensor) -> float:
    """Relative tolerance of the batch-independence comparison for the output's dtype
    (batched and single evaluations may round differently, never more than this)."""
    eps = torch.finfo(out.dtype).eps if out.is_floating_point() else 0.0
    return max(BATCH_RTOL, 50.0 * eps)


def outputs_agree(computed: Tensor, reference: Tensor) -> bool:
    """Whether two evaluations of the same outputs agree up to the rounding of their dtype
    (relative, with an absolute floor scaled by the outputs' size). NaN/Inf outputs raise
    :class:`~pacbound.errors.NumericalError` (no tolerance makes them comparable)."""
    for out in (computed, reference):
        if out.is_floating_point() and not bool(torch.all(torch.isfinite(out))):
            raise NumericalError(
                "the network produced NaN/Inf outputs on the first examples of --data (while "
                "checking that each example's prediction is its own); check the checkpoint "
                "and the data"
            )
    scale = float(reference.abs().max()) if reference.numel() else 1.0
    tol = _tolerance(reference)
    return computed.shape == reference.shape and torch.allclose(
        computed, reference, rtol=tol, atol=max(BATCH_ATOL, tol / 100) * (1.0 + scale)
    )


def check_batch_independence(forward: Callable[[Tensor], Tensor], x: Tensor) -> None:
    """Refuse a classifier whose output for an example depends on the other examples of its
    batch: rows of one batched evaluation against the same rows evaluated alone."""
    together = forward(x)
    rows = sorted({0, x.shape[0] // 2, x.shape[0] - 1})
    try:
        alone = torch.cat([forward(x[i : i + 1]) for i in rows])
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(
            f"the model cannot evaluate a single example ({type(exc).__name__}: "
            f"{str(exc)[:120]}); per-example certificates need per-example predictions"
        ) from None
    if not outputs_agree(together[rows], alone):
        raise InvalidInputError(
            "the model's output for an example depends on the other examples in its batch "
            "(batch-level mixing, e.g. train-mode normalization or attention across the "
            "batch): per-example certificates need per-example predictions"
        )


def _batch_independence(network: StochasticForward, x: Tensor) -> None:
    network.set_mode("mean")
    check_batch_independence(network, x)


@torch.no_grad()
def probe_network(
    network: StochasticForward, x: Tensor, *, batch_independence: bool = True
) -> None:
    """Run the probes of the module doc on ``x`` (a batch at the certification batch size,
    on the network's device). ``batch_independence=False`` skips the comparisons that need a
    deterministic forward (for models that are random by design); the data-flow probe always
    runs, on per-example passes and on a mean pass (which evaluates a functional sampler's
    model outside ``vmap``)."""
    was_training = network.training
    network.eval()
    checks: list[Callable[[], Any]] = [
        lambda: _run(network, x[: min(2, x.shape[0])], 0, None),
        lambda: _run(network, x, 0, None),
        lambda: _mean_pass(network, x[: min(2, x.shape[0])]),
    ]
    if batch_independence:
        checks += [lambda: _noise_locality(network, x), lambda: _batch_independence(network, x)]
    try:
        with DataFlowProbe(network, x):
            for check in checks:
                check()
    finally:
        network.set_mode("per_example")
        network.train(was_training)

"""The model's buffers in a compressed message: floating-point ones coded compactly, integer
ones that the factory does not rebuild coded exactly (MATH.md §6, issue #13).

**Integer (and boolean) buffers**, in ``named_buffers`` order (BatchNorm's
``num_batches_tracked`` excepted: an eval-mode forward never reads it, the decoder keeps the
factory's): one bit each, 0 = the factory's value (costs nothing more), 1 = coded losslessly,
δ(count + 1) then δ(zigzag(v) + 1) per value. A checkpoint whose integer buffers hold data
(a memorised table) is certified, paying for every value, instead of being refused.

**Floating-point buffers**: one bit each, 0 = the factory's value (a fixed table, an
untouched statistic); the others are coded per *group*: the buffers sharing the last component
of their name (``running_mean`` of every BatchNorm, ``running_var`` of every BatchNorm, …), in
order of first appearance. Each group is coded in the domain where its error matters, at
precision p = :data:`PRECISION_BITS`:

* BatchNorm means (``standard``): m / √(v̂ + ε) with v̂ the decoded variance of the channel
  (variances are decoded first), max error 2^-p: the mean shifts every activation of the
  channel, so its error counts against the channel's spread, not against the largest mean;
* all-positive groups (variances, ``log2``): log₂ v, max error 2^-p (relative ≤ 2^-p ln 2);
* any other group (``linear``): v, max error 2^-p · max|v|.

Three codes meet the target (or are exact); the shortest is written (so the choice is by
code length, per group, among codes of the same accuracy):

* ``fixed``: fixed point with step 2^e (the largest power of two ≤ twice the tolerance);
  the header holds e, the smallest integer q₀ and the width w; then w bits per value;
* ``codebook``: the fewest levels covering the values within the tolerance (greedy on the
  sorted values, which is optimal for a max-error target), the levels paid at float32, the
  level indices arithmetic-coded (adaptive KT, as the weights);
* ``raw``: float32 per value (exact for float32 buffers; wins only for non-finite values).

A fixed-point code wins for spread-out statistics (about p + 2 bits a value), a codebook when
values repeat (untouched channels, a constant table).

Lossy coding is sound by construction: the certificate is about the decoded model and its
errors are counted on it; the report gives its disagreement with the checkpoint.

**Which statistics** are coded is the compressor's choice, made on S and paid like any other
part of the message. After post-hoc quantization the checkpoint's running statistics no
longer describe the quantized convolutions' outputs (on a small MNIST ResNet at L = 8 the
decoded model went from 4 % to 32 % training error with exact statistics);
:func:`recalibrate_batchnorm` re-estimates them with the quantized weights (BatchNorm
re-estimation, e.g. Nagel et al. 2021, "A White Paper on Neural Network Quantization").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from pacbound.compressors.buffer_codes import (
    BufferCode,
    Domain,
    FloatGroupCode,
    FloatScheme,
    group_bits,
)
from pacbound.errors import InvalidInputError

#: Precision of the floating-point buffer codes (see the module docstring), about p + 2 bits
#: a value. Measured on a small MNIST ResNet (480 statistics, 1024 held-out images): p = 8
#: changes 5 predictions, as many as multiplying every weight by 1 + 2^-8·N(0, 1) (4); p = 6
#: changes 20, almost all through the means.
PRECISION_BITS = 8

__all__ = ["PRECISION_BITS", "BufferCode", "Domain", "FloatGroupCode", "FloatScheme"]


# --- which buffers, and how they are coded -------------------------------------------------


def integer_buffers(module: nn.Module) -> list[tuple[str, Tensor]]:
    """The non-floating buffers the message covers (``num_batches_tracked`` excepted)."""
    exempt = {
        f"{name}.num_batches_tracked" if name else "num_batches_tracked"
        for name, mod in module.named_modules()
        if isinstance(mod, nn.modules.batchnorm._BatchNorm)
    }
    return [
        (n, b) for n, b in module.named_buffers() if not b.is_floating_point() and n not in exempt
    ]


def float_buffers(module: nn.Module) -> list[tuple[str, Tensor]]:
    """The floating-point buffers, in ``named_buffers`` order (complex ones refused)."""
    out = []
    for name, buf in module.named_buffers():
        if buf.is_complex():
            raise InvalidInputError(f"buffer {name} is complex; the message cannot code it")
        if buf.is_floating_point():
            out.append((name, buf))
    return out


Group = list[tuple[str, Tensor]]
#: A BatchNorm mean's name → its variance's name and eps: the mean is coded in units of the
#: channel's decoded standard deviation √(v̂ + ε), the scale its error matters on.
Standardizers = dict[str, tuple[str, float]]


def float_groups(module: nn.Module, coded: tuple[bool, ...] | None = None) -> list[Group]:
    """The (coded) floating-point buffers grouped by the last component of their name."""
    groups: dict[str, Group] = {}
    for i, (name, buf) in enumerate(float_buffers(module)):
        if coded is None or coded[i]:
            groups.setdefault(name.rsplit(".", 1)[-1], []).append((name, buf))
    return list(groups.values())


def standardizers(module: nn.Module) -> Standardizers:
    out = {}
    for prefix, mod in module.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            dot = f"{prefix}." if prefix else ""
            out[f"{dot}running_mean"] = (f"{dot}running_var", float(mod.eps))
    return out


def _scale(
    group: Group, sources: Standardizers, variance: dict[str, Tensor]
) -> NDArray[np.float64]:
    """√(v̂ + ε) per value of a group of BatchNorm means."""
    parts = []
    for name, _ in group:
        var_name, eps = sources[name]
        parts.append(torch.sqrt(variance[var_name].detach().cpu().double().reshape(-1) + eps))
    return torch.cat(parts).numpy()


def _group_values(group: Group) -> NDArray[np.float64]:
    return torch.cat([b.detach().to("cpu", torch.float64).reshape(-1) for _, b in group]).numpy()


def _fixed(u: NDArray[np.float64], tol: float, domain: Domain) -> FloatGroupCode:
    exponent = math.floor(math.log2(2 * tol)) if tol > 0 else 0
    q = np.round(u / 2.0**exponent).astype(np.int64)
    offset = int(q.min())
    width = int(q.max() - offset).bit_length()
    return FloatGroupCode(FloatScheme.FIXED, domain, q - offset, exponent, offset, width)


def _codebook(u: NDArray[np.float64], tol: float, domain: Domain) -> FloatGroupCode | None:
    order = np.sort(u)
    centres, start = [], 0
    while start < order.size:  # greedy cover by intervals of width 2·tol: the fewest levels
        end = int(np.searchsorted(order, order[start] + 2 * tol, side="right"))
        centres.append(0.5 * (order[start] + order[end - 1]))
        start = end
    if len(centres) < 2:
        return None  # one level: the fixed-point code (width 0) is shorter anyway
    levels = np.unique(np.asarray(centres, dtype=np.float32))
    stored = levels.astype(np.float64)
    right = np.clip(np.searchsorted(stored, u), 1, stored.size - 1)
    symbols = np.where(u - stored[right - 1] <= stored[right] - u, right - 1, right)
    return FloatGroupCode(FloatScheme.CODEBOOK, domain, symbols.astype(np.int64), levels=levels)


def code_float_group(
    values: NDArray[np.float64],
    precision: int = PRECISION_BITS,
    scale: NDArray[np.float64] | None = None,
) -> FloatGroupCode:
    """The shortest of the raw, fixed-point and codebook codes of one group (module
    docstring); with ``scale``, the values are coded as v / scale at absolute precision."""
    raw_bits = values.astype(np.float32).view(np.uint32).astype(np.int64)
    candidates = [FloatGroupCode(FloatScheme.RAW, Domain.LINEAR, raw_bits)]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = values / scale if scale is not None else values
    if bool(np.all(np.isfinite(u))) and values.size:
        log = scale is None and bool(np.all(values > 0))
        if log:
            u, domain, tol = np.log2(values), Domain.LOG2, 2.0**-precision
        elif scale is not None:
            domain, tol = Domain.STANDARD, 2.0**-precision
        else:
            domain, tol = Domain.LINEAR, 2.0**-precision * float(np.max(np.abs(values)))
        candidates.append(_fixed(u, tol, domain))
        book = _codebook(u, tol, domain) if tol > 0 else None
        if book is not None:
            candidates.append(book)
    return min(candidates, key=group_bits)


def _float_codes(
    groups: list[Group],
    sources: Standardizers,
    variance: dict[str, Tensor],
    code: Callable[[int, Group, NDArray[np.float64] | None], FloatGroupCode],
) -> list[FloatGroupCode]:
    """Each group's code, the groups with no scale first, then the BatchNorm means, whose
    scales read ``variance`` after the first pass updated it with the decoded values."""
    codes: dict[int, FloatGroupCode] = {}
    for second in (False, True):
        for i, group in enumerate(groups):
            if _standardized(group, sources) != second:
                continue
            scale = _scale(group, sources, variance) if second else None
            codes[i] = code(i, group, scale)
            flat, offset = torch.from_numpy(codes[i].values(scale)), 0
            for name, buf in group:
                variance[name] = flat[offset : offset + buf.numel()].to(buf.dtype).view_as(buf)
                offset += buf.numel()
    return [codes[i] for i in range(len(groups))]


def _standardized(group: Group, sources: Standardizers) -> bool:
    return all(name in sources for name, _ in group)


def encode_buffers(module: nn.Module, reference: nn.Module) -> BufferCode:
    """The buffers of ``module`` (the checkpoint); ``reference`` is the factory's build."""
    ref = dict(reference.named_buffers())

    def same(name: str, buf: Tensor) -> bool:
        other = ref.get(name)
        return (
            other is not None
            and other.shape == buf.shape
            and other.dtype == buf.dtype
            and torch.equal(other.cpu(), buf.cpu())
        )

    named = float_buffers(module)  # refuses complex buffers first
    integers = tuple(
        None if same(name, buf) else buf.detach().cpu().to(torch.int64).reshape(-1).numpy()
        for name, buf in integer_buffers(module)
    )
    coded = tuple(not same(name, buf) for name, buf in named)
    floats = _float_codes(
        float_groups(module, coded),
        standardizers(module),
        {name: buf for name, buf in named},
        lambda _, group, scale: code_float_group(_group_values(group), scale=scale),
    )
    return BufferCode(integers, coded, tuple(floats))


def decode_buffers(module: nn.Module, code: BufferCode) -> None:
    """Load ``code`` into ``module`` (a fresh factory build) in place; InvalidInputError when
    the code does not fit its buffers."""
    if code.legacy is not None:
        _decode_legacy(module, code.legacy)
        return
    ints, floats = integer_buffers(module), float_buffers(module)
    if len(code.integers) != len(ints) or len(code.coded) != len(floats):
        raise InvalidInputError(
            "this artifact's buffers do not fit the architecture's (another --arch or "
            "--arch-kwargs?)"
        )
    groups = float_groups(module, code.coded)
    sizes = [sum(b.numel() for _, b in g) for g in groups]
    if [g.symbols.size for g in code.floats] != sizes:
        raise InvalidInputError(
            "this artifact's buffers do not fit the architecture's (another --arch or "
            "--arch-kwargs?)"
        )
    with torch.no_grad():
        for (_, buf), values in zip(ints, code.integers, strict=True):
            if values is not None:
                if values.size != buf.numel():
                    raise InvalidInputError("this artifact's integer buffers do not fit the model")
                buf.copy_(torch.from_numpy(values).view_as(buf).to(buf.device, buf.dtype))
        decoded: dict[str, Tensor] = {name: buf for name, buf in floats}
        _float_codes(groups, standardizers(module), decoded, lambda i, *_: code.floats[i])
        for name, buf in floats:
            buf.copy_(decoded[name].to(buf.device, buf.dtype))


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, x: Tensor, *, batch_size: int) -> int:
    """Re-estimate, in place, the running mean and variance of every BatchNorm of ``module``
    that tracks them, from ``x`` through ``module`` as it is (e.g. with quantized weights).

    Only the BatchNorm layers run in training mode (every other module stays in eval mode:
    no dropout); each layer's statistics are the equal-weight average over the batches of
    ``x`` (``momentum=None``) of the batch means and unbiased variances, with a last partial
    batch dropped when there is a full one. Modes and momenta are restored. Returns the
    number of layers re-estimated (0: nothing to do, ``module`` untouched).
    """
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]
    if not norms or x.shape[0] == 0:
        return 0
    modes = [(m, m.training) for m in module.modules()]
    momenta = [(m, m.momentum) for m in norms]
    device = next(iter(module.buffers())).device
    size = min(batch_size, int(x.shape[0]))
    module.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for start in range(0, int(x.shape[0]) - size + 1, size):
            module(x[start : start + size].to(device))
    finally:
        for mod, mode in modes:
            mod.training = mode
        for norm, momentum in momenta:
            norm.momentum = momentum
    return len(norms)


def _decode_legacy(module: nn.Module, raw: NDArray[np.float32]) -> None:
    buffers = [b for _, b in float_buffers(module)]
    if raw.size == 0:
        return  # nothing coded: every buffer is the factory's
    if raw.size != sum(b.numel() for b in buffers):
        raise InvalidInputError(
            "this artifact's buffers do not fit the architecture's (another --arch or "
            "--arch-kwargs?)"
        )
    flat, offset = torch.from_numpy(raw.copy()), 0
    with torch.no_grad():
        for buf in buffers:
            buf.copy_(flat[offset : offset + buf.numel()].view_as(buf).to(buf.device, buf.dtype))
            offset += buf.numel()

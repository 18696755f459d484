"""Label maps, normalizations and input shapes: the data transforms a user can type."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from pacbound.errors import InvalidInputError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?:(\d+)$")
#: ``input_shape`` value that repeats the rule of reports written before the shape fields
#: existed: every N×H×W array, of any dtype, got a channel axis.
LEGACY_CHANNEL_AXIS = "legacy-channel-axis"

#: Named normalizations (per-channel mean, std of [0, 1] pixels).
NAMED_NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
}


@dataclass(frozen=True)
class LabelMap:
    """A map from original labels to new ones, as typed: ``0-4:0,5-9:1`` (binary MNIST).

    >>> m = parse_label_map("0-4:0,5-9:1")
    >>> m.apply(torch.tensor([0, 4, 5, 9]), source="--data").tolist()
    [0, 0, 1, 1]
    >>> m.num_classes
    2
    """

    text: str
    pairs: tuple[tuple[int, int], ...]  # (original label, new label), sorted

    @property
    def num_classes(self) -> int:
        return max(new for _, new in self.pairs) + 1

    def apply(self, y: Tensor, *, source: str) -> Tensor:
        table = torch.full((max(old for old, _ in self.pairs) + 2,), -1, dtype=torch.int64)
        for old, new in self.pairs:
            table[old] = new
        mapped = table[y.clamp(0, table.numel() - 1)]
        uncovered = torch.unique(y[mapped < 0])
        if uncovered.numel():
            shown = ", ".join(str(v) for v in uncovered[:10].tolist())
            raise InvalidInputError(
                f"--label-map {self.text!r} does not cover label(s) {shown} found in {source}; "
                "map every label that occurs in the data",
                param="--label-map",
            )
        return mapped


def parse_label_map(text: str) -> LabelMap:
    """Parse ``OLD[-OLD]:NEW`` entries separated by commas; ranges are inclusive."""
    pairs: dict[int, int] = {}
    for entry in (e.strip() for e in text.split(",")):
        match = _RANGE.match(entry.replace(" ", ""))
        if match is None:
            raise InvalidInputError(
                f"--label-map: cannot read {entry!r} in {text!r}; write entries OLD:NEW or "
                "FIRST-LAST:NEW separated by commas, e.g. 0-4:0,5-9:1",
                param="--label-map",
            )
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if last < first:
            raise InvalidInputError(
                f"--label-map: range {entry!r} runs backwards; write FIRST-LAST with FIRST ≤ LAST",
                param="--label-map",
            )
        for old in range(first, last + 1):
            if old in pairs:
                raise InvalidInputError(
                    f"--label-map: label {old} is mapped twice in {text!r}; map each label once",
                    param="--label-map",
                )
            pairs[old] = int(match.group(3))
    return LabelMap(text, tuple(sorted(pairs.items())))


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x − mean) / std`` on channel axis 1 (one value applies to all channels).

    >>> parse_normalization("mnist")
    Normalization(mean=(0.1307,), std=(0.3081,))
    >>> parse_normalization("0.5/0.5/0.5,0.25/0.25/0.25").std
    (0.25, 0.25, 0.25)
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def describe(self) -> str:
        return f"mean={list(self.mean)}, std={list(self.std)}"

    def apply(self, x: Tensor, *, source: str) -> Tensor:
        channels = x.shape[1] if x.ndim >= 2 else 1
        if len(self.mean) not in (1, channels):
            raise InvalidInputError(
                f"--normalize gives {len(self.mean)} channel values but {source} has "
                f"{channels} channels (axis 1); give 1 or {channels}",
                param="--normalize",
            )
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype).reshape(shape)
        std = torch.tensor(self.std, dtype=x.dtype).reshape(shape)
        return x.sub_(mean).div_(std)


def parse_normalization(text: str) -> Normalization:
    """``mnist``, ``MEAN,STD``, or per channel ``M1/M2/M3,S1/S2/S3``."""
    named = NAMED_NORMALIZATIONS.get(text.strip().lower())
    if named is not None:
        return Normalization(*named)
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        mean, std = (tuple(float(v) for v in p.split("/")) for p in parts)
    except ValueError:
        raise InvalidInputError(
            f"--normalize {text!r}: write MEAN,STD (e.g. 0.1307,0.3081), per channel "
            f"M1/M2/M3,S1/S2/S3, or a name ({', '.join(NAMED_NORMALIZATIONS)})",
            param="--normalize",
        ) from None
    if len(mean) != len(std):
        raise InvalidInputError(
            f"--normalize {text!r}: {len(mean)} means but {len(std)} standard deviations",
            param="--normalize",
        )
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise InvalidInputError(
            f"--normalize {text!r}: means must be finite and standard deviations positive",
            param="--normalize",
        )
    return Normalization(mean, std)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``C,H,W`` (or any 1 to 4 positive sizes, comma- or ``x``-separated): the shape of one
    example as the model takes it.

    >>> parse_input_shape("1,28,28")
    (1, 28, 28)
    """
    parts = [p.strip() for p in re.split(r"[,x×]", text.strip())]
    if not 1 <= len(parts) <= 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InvalidInputError(
            f"--input-shape {text[:40]!r}: write the shape of one example as 1 to 4 positive "
            "sizes separated by commas, e.g. 1,28,28 (C,H,W)",
            param="--input-shape",
        )
    return tuple(int(p) for p in parts)


def example_shape(
    stored_shape: tuple[int, ...],
    input_shape: tuple[int, ...] | str | None,
    *,
    images: str | None,
    where: str,
) -> tuple[tuple[int, ...], str | None]:
    """The shape each example of an array of ``stored_shape`` (N first) is given to the model
    in, and why it differs from the stored one (``None`` when it does not).

    ``input_shape`` (``--input-shape``) wins; otherwise N×H×W arrays that are ``images``
    (what kind: an IDX folder, a ``uint8`` array) get a channel axis, and everything else
    keeps its shape.

    >>> example_shape((5, 28, 28), None, images="IDX images", where="--data d")
    ((1, 28, 28), 'channel axis added (IDX images)')
    >>> example_shape((5, 28, 28), None, images=None, where="--data d")
    ((28, 28), None)
    """
    stored = tuple(int(d) for d in stored_shape[1:])
    if isinstance(input_shape, tuple):
        if math.prod(input_shape) != math.prod(stored):
            size = math.prod(stored)
            raise InvalidInputError(
                f"--input-shape {','.join(map(str, input_shape))} holds "
                f"{math.prod(input_shape)} values per example, but {where} has {size} (stored "
                f"shape {'×'.join(map(str, stored))}); give dimensions whose product is {size}",
                param="--input-shape",
            )
        return input_shape, (None if input_shape == stored else "--input-shape")
    if len(stored) == 2 and input_shape == LEGACY_CHANNEL_AXIS:
        return (1, *stored), "channel axis added (N×H×W array)"
    if len(stored) == 2 and images is not None:
        return (1, *stored), f"channel axis added ({images})"
    return stored, None

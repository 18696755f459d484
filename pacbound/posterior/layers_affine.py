"""Elementwise affine maps drawn from a diagonal Gaussian, independently per example.

The learned affine of ``nn.LayerNorm`` and ``nn.GroupNorm`` and the per-channel
:class:`~pacbound.posterior.normalization.ChannelAffine` (eval-mode BatchNorm, MATH.md §10)
multiply and shift the (normalized) input by vectors. A per-example draw of those vectors is
a (batch, …) tensor broadcast over the example's positions, so every position of example i
uses example i's one draw: :class:`GaussianAffine` is exact, at memory ∝ batch × vector size.
The normalization itself (no parameters) is computed as the module does.

``"shared"`` (training only): one draw per call. ``"mean"``: the module's own forward at μ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.layers import GaussianModule
from pacbound.posterior.normalization import ChannelAffine


class GaussianAffine(GaussianModule):
    """The drawn ``scale``/``shift`` vectors of an elementwise affine (see the module doc).

    Subclasses say how the input is normalized (:meth:`normalize`), where the vectors lie in
    the input (:meth:`vector_dim`: the input dimension the vector's first dimension meets)
    and how the module itself computes at fixed vectors (:meth:`at`)."""

    def normalize(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def vector_dim(self, x: Tensor) -> int:
        raise NotImplementedError

    def at(self, x: Tensor, scale: Tensor | None, shift: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _vectors(self) -> tuple[tuple[Tensor, Tensor] | None, tuple[Tensor, Tensor] | None]:
        names = type(self).drawn
        found = []
        for name in names:
            mu = getattr(self, f"{name}_mu")
            found.append(None if mu is None else (mu, getattr(self, f"{name}_log_sigma")))
        return found[0], found[1]

    def forward(self, x: Tensor) -> Tensor:
        self._enter(x)
        scale, shift = self._vectors()
        if self.mode == "mean":
            return self.at(
                x, None if scale is None else scale[0], None if shift is None else shift[0]
            )
        if self.mode == "shared":
            one = [None if v is None else self._shared_draw(v[0], v[1]) for v in (scale, shift)]
            return self.at(x, one[0], one[1])
        dim = self.vector_dim(x)
        if dim < 1:
            raise InvalidInputError(
                f"module {self.layer_name!r} receives input of shape {list(x.shape)}: its "
                "affine vectors would span the batch dimension, so they cannot be drawn per "
                "example"
            )
        b = int(x.shape[0])
        out = self.normalize(x)
        draws = self._draw_group(type(self).drawn, b)  # both vectors' noise keyed together
        for i, (vector, drawn) in enumerate(zip((scale, shift), draws, strict=True)):
            if vector is None or drawn is None:
                continue
            mu = vector[0]
            # (batch, 1 … 1, *vector shape, 1 … 1): example i's vector at every position of it
            view = (b, *[1] * (dim - 1), *mu.shape, *[1] * (x.dim() - dim - mu.dim()))
            out = out * drawn.view(view) if i == 0 else out + drawn.view(view)
        return out

    def per_example_elements(self) -> int:
        return 0  # vectors as large as one position of the activations


class GaussianLayerNorm(GaussianAffine):
    """``nn.LayerNorm`` with per-example ``weight``/``bias`` over ``normalized_shape``."""

    def __init__(self, base: nn.LayerNorm, log_sigma_init: float) -> None:
        super().__init__(base.weight, base.bias, log_sigma_init)
        self.normalized_shape = tuple(base.normalized_shape)
        self.eps = base.eps

    def normalize(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, None, None, self.eps)

    def vector_dim(self, x: Tensor) -> int:
        return x.dim() - len(self.normalized_shape)

    def at(self, x: Tensor, scale: Tensor | None, shift: Tensor | None) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, scale, shift, self.eps)


class GaussianGroupNorm(GaussianAffine):
    """``nn.GroupNorm`` with per-example per-channel ``weight``/``bias``."""

    def __init__(self, base: nn.GroupNorm, log_sigma_init: float) -> None:
        super().__init__(base.weight, base.bias, log_sigma_init)
        self.num_groups = base.num_groups
        self.eps = base.eps

    def normalize(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, None, None, self.eps)

    def vector_dim(self, x: Tensor) -> int:
        return 1

    def at(self, x: Tensor, scale: Tensor | None, shift: Tensor | None) -> Tensor:
        return F.group_norm(x, self.num_groups, scale, shift, self.eps)


class GaussianChannelAffine(GaussianAffine):
    """:class:`~pacbound.posterior.normalization.ChannelAffine` with per-example
    ``scale``/``shift`` vectors (eval-mode BatchNorm, MATH.md §10)."""

    drawn = ("scale", "shift")

    def __init__(self, base: ChannelAffine, log_sigma_init: float) -> None:
        nn.Module.__init__(self)
        self.mode = "per_example"
        self.generator = None
        for name in self.drawn:
            value = getattr(base, name).detach()
            self.register_parameter(f"{name}_mu", nn.Parameter(value.clone()))
            self.register_parameter(
                f"{name}_log_sigma", nn.Parameter(torch.full_like(value, log_sigma_init))
            )

    def normalize(self, x: Tensor) -> Tensor:
        return x

    def vector_dim(self, x: Tensor) -> int:
        return 1

    def at(self, x: Tensor, scale: Tensor | None, shift: Tensor | None) -> Tensor:
        assert scale is not None and shift is not None
        view = (1, -1, *([1] * (x.dim() - 2)))
        return x * scale.view(view) + shift.view(view)

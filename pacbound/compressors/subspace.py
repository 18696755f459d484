"""Random-subspace training: θ = θ₀ + P w, only w ∈ R^d trained (Li et al. 2018).

θ₀ is a copy of the wrapped module's parameters at construction (its initialisation, rebuilt by
the decoder from the architecture factory and the seed); P is a
:class:`~pacbound.compressors.projectors.Projector` regenerated from the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from pacbound.compressors.base import parameter_vector
from pacbound.compressors.codebooks import parse_enum
from pacbound.compressors.projectors import Projector
from pacbound.errors import InvalidInputError, NumericalError
from pacbound.parallel.training import (
    average_buffers,
    average_gradients,
    batch_share,
    shared_loss,
)


class Optimizer(str, Enum):
    ADAM = "adam"
    SGD = "sgd"


class SubspaceModel(nn.Module):
    """``module`` evaluated at θ₀ + P w; ``w`` (starting at 0) is the only trainable parameter.

    Buffers (BatchNorm statistics) stay the module's own and update as usual in train mode.
    """

    def __init__(self, module: nn.Module, projector: Projector, w: Tensor | None = None) -> None:
        super().__init__()
        theta0 = parameter_vector(module).to(projector.device, projector.dtype)
        if theta0.numel() != projector.D:
            raise InvalidInputError(
                f"the projector maps to D={projector.D} parameters but the model has "
                f"{theta0.numel()}; build it for this architecture"
            )
        self.module = module.to(projector.device)
        self.projector = projector
        self._names = [n for n, _ in module.named_parameters()]
        self._shapes = [p.shape for p in module.parameters()]
        self.register_buffer("theta0", theta0)
        start = torch.zeros(projector.d, dtype=projector.dtype, device=projector.device)
        if w is not None:
            start = start + w.detach().to(projector.device, projector.dtype)
        self.w = nn.Parameter(start)

    @property
    def initial_theta(self) -> Tensor:
        """θ₀, the flat initial parameters."""
        return self.get_buffer("theta0")

    def theta(self) -> Tensor:
        """θ₀ + P w (differentiable in w)."""
        return self.initial_theta + self.projector.matvec(self.w)

    def forward(self, x: Tensor) -> Tensor:
        params, offset = {}, 0
        theta = self.theta()
        for name, shape in zip(self._names, self._shapes, strict=True):
            count = shape.numel()
            params[name] = theta[offset : offset + count].view(shape)
            offset += count
        out: Tensor = functional_call(self.module, params, (x,))
        return out


def train_subspace(
    model: nn.Module,
    projector: Projector,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 20,
    lr: float = 1e-2,
    batch_size: int = 128,
    seed: int = 0,
    optimizer: Optimizer | str = Optimizer.ADAM,
    w0: Tensor | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    lr_schedule: str = "constant",
) -> Tensor:
    """Train w with θ = θ₀ + P w, θ₀ = ``model``'s current parameters; returns w (length d).

    Recipe: ``epochs`` passes over (x, y) in minibatches of ``batch_size``, reshuffled each
    epoch by a CPU generator seeded with ``seed``; Adam (β = 0.9, 0.999) or SGD with momentum
    0.9 at learning rate ``lr``, constant or (``lr_schedule="cosine"``) decayed to 0 along a
    half cosine over all steps; cross-entropy by default; w starts at ``w0`` or 0.
    The defaults (Adam, lr 1e-2, 20 epochs, batch 128) follow Lotfi et al. (2022) for small
    MLPs on MNIST-sized data. Computation runs on the projector's device; ``model``'s buffers
    (BatchNorm statistics) update in place. Raises NumericalError if the loss becomes NaN.

    Under torchrun every rank takes its share of each mini-batch (the one-process order),
    ``loss_fn`` (a mean over the examples it is given) is weighted by the share, so the loss
    is the whole batch's mean (summed over ranks, so a NaN stops every rank) and
    the gradient of w is averaged before each step; the buffers are averaged over ranks at
    the end (:func:`pacbound.parallel.training.average_buffers`). One process is bit for
    bit the one-process run; at world size > 1 the trained w (and the buffers) differ from
    it by floating-point reduction order and BatchNorm's batch statistics over the rank's
    share. The certificate is computed from the message as coded, whatever w it holds.
    """
    if len(x) != len(y) or len(x) == 0:
        raise InvalidInputError(f"need as many labels as inputs (>0), got {len(x)} and {len(y)}")
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise InvalidInputError(
            f"need epochs ≥ 0, batch_size ≥ 1, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    choice = parse_enum(Optimizer, optimizer, "optimizer")
    if lr_schedule not in ("constant", "cosine"):
        raise InvalidInputError(
            f"unknown subspace learning-rate schedule {lr_schedule!r}; valid: constant, cosine",
            param="--subspace-lr-schedule",
        )
    total_steps = max(1, epochs * math.ceil(len(x) / batch_size))
    step = 0
    subspace = SubspaceModel(model, projector, w0)
    subspace.train()
    if choice is Optimizer.ADAM:
        opt: torch.optim.Optimizer = torch.optim.Adam([subspace.w], lr=lr)
    else:
        opt = torch.optim.SGD([subspace.w], lr=lr, momentum=0.9)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    device = projector.device
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            if lr_schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))
            step += 1
            opt.zero_grad()
            share = batch_share(idx)
            local = None
            if not share.empty:
                rows = share.rows
                local = loss_fn(subspace(x[rows].to(device)), y[rows].to(device))
            loss = shared_loss(local, share, like=subspace.w)
            if not torch.isfinite(loss):
                raise NumericalError(f"subspace training diverged (loss {loss.item()}); lower lr")
            loss.backward()
            average_gradients([subspace.w])
            opt.step()
    average_buffers(model)
    return subspace.w.detach().clone()


def init_from_checkpoint_lstsq(
    theta_minus_theta0: Tensor,
    projector: Projector,
    *,
    max_iters: int = 500,
    rtol: float = 1e-5,
) -> Tensor:
    """argmin_w ‖P w − (θ − θ₀)‖₂ by conjugate gradients on the normal equations (CGLS).

    Uses only ``matvec`` and ``rmatvec`` (no dense P). Stops when ‖Pᵀ r‖ ≤ rtol · ‖Pᵀ b‖;
    raises NumericalError if that does not happen within ``max_iters`` iterations.
    """
    b = projector.as_vector(theta_minus_theta0.detach().reshape(-1), projector.D, "θ − θ₀")
    x = torch.zeros(projector.d, dtype=projector.dtype, device=projector.device)
    residual = b.clone()
    s = projector.rmatvec(residual)
    direction = s.clone()
    gamma = float(s.double().square().sum())
    target = rtol * gamma**0.5
    for _ in range(max_iters):
        if gamma**0.5 <= target or gamma == 0.0:
            return x
        q = projector.matvec(direction)
        alpha = gamma / float(q.double().square().sum())
        x = x + alpha * direction
        residual = residual - alpha * q
        s = projector.rmatvec(residual)
        gamma_next = float(s.double().square().sum())
        direction = s + (gamma_next / gamma) * direction
        gamma = gamma_next
    if gamma**0.5 <= target:
        return x
    raise NumericalError(
        f"least squares did not converge in {max_iters} iterations "
        f"(‖Pᵀr‖ = {gamma**0.5:.3g} > {target:.3g}); raise max_iters or rtol"
    )

"""The prior of the marginal certificate: the kernel of one grid point, on given inputs.

The analytic kernels (``relu``, ``erf``: fully connected NNGP; ``conv-relu``: the
convolutional NNGP) are computed in float64 from the flattened (or image-shaped) inputs; the
``monte-carlo`` kernel is the covariance of the outputs of ``draws`` random initialisations of
``--arch``, seeded from ``--seed`` alone (:func:`derived_seed`), never from the data. Every
kernel includes the documented ``jitter``·I (white noise in the prior, so the certificate is
about the GP it actually uses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pacbound.certify.marginal_options import POOLING, MarginalOptions, derived_seed
from pacbound.errors import InvalidInputError


def check_memory(n: int, classes: int, budget: int, what: str = "--data") -> None:
    """Refuse (exit 3, before any work) an n whose matrices exceed ``budget`` bytes, naming
    the largest n that fits."""
    from pacbound.marginal import matrix_bytes, max_n_for_memory
    from pacbound.posterior.layers import format_bytes

    need = matrix_bytes(n, classes)
    if need > budget:
        largest = max_n_for_memory(budget, classes)
        raise InvalidInputError(
            f"{what} has n = {n} examples ({classes} classes): the marginal certificate's "
            f"matrices need {format_bytes(need)}, more than --max-memory "
            f"{format_bytes(budget)}; the largest n that fits is {largest} (give a subset of "
            "the data, e.g. as an .npz file, or more --max-memory)",
            param="--max-memory",
        )


def kernel_spec(options: MarginalOptions, index: int, classes: int) -> Any:
    """The :class:`pacbound.marginal.KernelSpec` of grid point ``index`` for ``classes``
    classes (a Monte-Carlo kernel reads out the logit difference of a two-class network,
    else the per-class second moment averaged over the classes)."""
    from pacbound.marginal import KernelSpec

    sigma_w, sigma_b, jitter = options.grid()[index]
    extra: dict[str, Any] = {}
    if options.kernel == "conv-relu":
        extra = {"filter_size": options.filter_size, "pooling": POOLING}
    elif options.kernel == "monte-carlo":
        extra = {
            "architecture": options.architecture,
            "arch_kwargs": dict(options.arch_kwargs or {}),
            "draws": options.kernel_draws,
            "seed": derived_seed(options.seed, "kernel"),
            "readout": "second-minus-first" if classes == 2 else "class-average",
        }
    return KernelSpec(
        name=options.kernel,
        depth=options.depth if options.depth is not None else 0,
        sigma_w=sigma_w,
        sigma_b=sigma_b,
        jitter=jitter,
        extra=extra,
    )


def network_factory(options: MarginalOptions) -> Any:
    """``seed ↦`` a fresh module of ``--arch`` initialised from that seed (monte-carlo)."""
    from pacbound.io.architectures import build_module, parse_arch

    arch = parse_arch(str(options.architecture))
    kwargs = dict(options.arch_kwargs or {})

    def build(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_module(arch, kwargs).eval()

    return build


def _raw(spec: Any, options: MarginalOptions, x: Tensor, device: torch.device) -> np.ndarray:
    """The kernel without the jitter on the inputs ``x`` (float64, (n, n))."""
    from pacbound.marginal import conv_nngp, fc_nngp

    if spec.name == "monte-carlo":
        from pacbound.marginal.mc_kernel import monte_carlo_kernel

        return np.asarray(
            monte_carlo_kernel(
                network_factory(options),
                x.float(),  # the network's own precision
                draws=int(spec.extra["draws"]),
                seed=int(spec.extra["seed"]),
                readout=spec.extra["readout"],
                batch_size=options.batch_size,
                device=str(device),
            ),
            dtype=np.float64,
        )
    inputs = x.detach().to("cpu", torch.float64).numpy()
    if spec.name == "conv-relu":
        if inputs.ndim != 4:
            raise InvalidInputError(
                f"--kernel conv-relu needs images (n, channels, height, width); the inputs "
                f"have shape {list(inputs.shape)} (give --input-shape C,H,W)",
                param="--kernel",
            )
        return conv_nngp(
            inputs,
            depth=spec.depth,
            sigma_w=spec.sigma_w,
            sigma_b=spec.sigma_b,
            filter_size=int(spec.extra["filter_size"]),
            pooling=str(spec.extra["pooling"]),
        )
    return fc_nngp(
        inputs.reshape(inputs.shape[0], -1),
        depth=spec.depth,
        sigma_w=spec.sigma_w,
        sigma_b=spec.sigma_b,
        nonlinearity=spec.name,
    )


def _row_keys(x: Tensor) -> list[bytes]:
    return [row.tobytes() for row in x.detach().cpu().reshape(x.shape[0], -1).numpy()]


def refuse_duplicates(x: Tensor, option: str = "--data") -> None:
    """Refuse (exit 3) identical inputs: the white noise of the prior is a function of the
    input, so the jittered kernel is singular on duplicates."""
    seen: dict[bytes, int] = {}
    for i, key in enumerate(_row_keys(x)):
        if key in seen:
            raise InvalidInputError(
                f"{option}: examples {seen[key]} and {i} have identical inputs; the prior's "
                "kernel (with its jitter) is singular on duplicates: remove duplicate inputs",
                param=option,
            )
        seen[key] = i


def kernel_on(spec: Any, options: MarginalOptions, x: Tensor, device: torch.device) -> np.ndarray:
    """The prior covariance of the training inputs: kernel + jitter·I, float64 (n, n)."""
    refuse_duplicates(x)
    kernel = _raw(spec, options, x, device)
    kernel[np.diag_indices_from(kernel)] += spec.jitter
    return kernel


def joint_kernel(
    spec: Any, options: MarginalOptions, x: Tensor, test: Tensor, device: torch.device
) -> np.ndarray:
    """The prior covariance of the training and test inputs together ((n + m)²): the kernel
    plus jitter·1[x = x'] (white noise shared by identical inputs, e.g. a test image that is
    also a training image)."""
    both = torch.cat([x, test.to(x.dtype)])
    kernel = _raw(spec, options, both, device)
    groups: dict[bytes, list[int]] = {}
    for i, key in enumerate(_row_keys(both)):
        groups.setdefault(key, []).append(i)
    for rows in groups.values():
        kernel[np.ix_(rows, rows)] += spec.jitter
    return kernel

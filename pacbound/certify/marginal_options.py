"""The options of ``certify --method marginal`` (one frozen dataclass), read from click's
parameters or from a report's ``options`` block, and the δ budget they imply.

The prior is fixed before S is seen: the number of classes C (``--num-classes``, the targets
of ``--label-map``, or the output width of a Monte-Carlo kernel's ``--arch``; never the labels
of S), a kernel (``--kernel``) with its hyperparameters and its white-noise ``--jitter``, either
one value each or a grid (``--sigma-w 1,1.4,2 --sigma-b 0,0.1 --jitter 1e-6,1e-4``: their
product, searched by the certified bound and paid by a union bound: every grid point's
statements hold with δ/|grid|, a point whose kernel is not positive definite included).
δ is spent on two parts, each shared by the grid: the PAC-Bayes-kl inequality and
the importance-sampling lower bound on P(U) (Markov's inequality, ``--is-delta``, default δ/2,
which minimises ln(1/δ_PB) + ln(1/δ_IS)).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pacbound.bounds import DeltaBudget, DeltaPart
from pacbound.bounds.budget import remaining_delta
from pacbound.bounds.validation import check_count, check_delta, check_positive
from pacbound.certify.gaussian_options import parse_size
from pacbound.errors import InvalidInputError, UsageError

#: The kernels ``--kernel`` offers (the names of :class:`pacbound.marginal.KernelSpec`).
KERNELS = ("relu", "erf", "conv-relu", "monte-carlo")
#: Kernels computed in closed form from σ_w, σ_b and the depth (a grid over σ_w, σ_b).
ANALYTIC = ("relu", "erf", "conv-relu")
#: How the convolutional kernel reads out its last layer (global average pooling, then a
#: dense readout: :func:`pacbound.marginal.conv_nngp`).
POOLING = "global-average"
#: σ_w, σ_b of a Monte-Carlo kernel's spec: unused (the architecture's own initialisation
#: is the prior), recorded as this one grid point.
MONTE_CARLO_POINT = (1.0, 0.0)
DEFAULTS = {
    "sigma_w": "1.4142135623730951",  # √2: the ReLU network's critical (He) initialisation
    "sigma_b": "0.0",
    "jitter": "1e-6",
    "kernel_draws": 1000,
    "is_samples": 1000,
    "filter_size": 3,
}


def derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose (``"kernel"``, ``"importance-sampling"``) of ``--seed``:
    independent streams, fixed before the data are read.

    >>> derived_seed(0, "kernel") == derived_seed(0, "kernel") != derived_seed(0, "other")
    True
    """
    digest = hashlib.sha256(f"pacbound-marginal/{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def parse_grid(text: str | float | tuple[float, ...], flag: str) -> tuple[float, ...]:
    """``"1.0"`` or ``"1,1.4,2"`` → the values (non-negative, finite, each once)."""
    if isinstance(text, tuple):
        values = text
    elif isinstance(text, (int, float)):
        values = (float(text),)
    else:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise InvalidInputError(
                f"{flag} {text!r}: give a number or numbers separated by commas, e.g. 1,1.4,2",
                param=flag,
            ) from None
    for v in values:
        if flag == "--jitter":
            check_positive(v, flag)  # "--jitter must be > 0" / "must be finite"
        elif not (math.isfinite(v) and v >= 0):
            raise InvalidInputError(f"{flag} values must be finite and ≥ 0, got {v!r}", param=flag)
    if len(set(values)) != len(values):
        raise InvalidInputError(f"{flag} lists a value twice ({text}); list each once", param=flag)
    return values


@dataclass(frozen=True)
class MarginalOptions:
    """Everything ``certify --method marginal`` is run with (recorded in the report)."""

    kernel: str
    depth: int | None  # hidden layers of the analytic kernels (None: monte-carlo)
    sigma_w: tuple[float, ...]
    sigma_b: tuple[float, ...]
    jitter: tuple[float, ...]  # a float is read as a grid of one
    delta: float
    seed: int
    is_samples: int
    is_delta: float
    filter_size: int | None = None  # conv-relu
    architecture: str | None = None  # monte-carlo: the --arch whose initialisations are drawn
    arch_kwargs: Mapping[str, Any] | None = None
    kernel_draws: int | None = None  # monte-carlo
    max_memory: int | None = None  # None: the default fraction of the device's memory
    batch_size: int = 1024
    #: C, fixed before S is seen (None: not resolved yet, see :func:`resolve_classes`)
    num_classes: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.jitter, tuple):
            object.__setattr__(self, "jitter", (float(self.jitter),))

    @property
    def grid_size(self) -> int:
        return len(self.sigma_w) * len(self.sigma_b) * len(self.jitter)

    def grid(self) -> tuple[tuple[float, float, float], ...]:
        """The (σ_w, σ_b, jitter) grid points, σ_w outer, jitter inner: the order the
        hypothesis file indexes."""
        return tuple(itertools.product(self.sigma_w, self.sigma_b, self.jitter))

    def budget(self) -> DeltaBudget:
        """δ = δ_PB + δ_IS, each shared by the kernel grid (a union bound over its points)."""
        g = self.grid_size
        return DeltaBudget(
            self.delta,
            (
                DeltaPart(
                    "pac-bayes",
                    remaining_delta(self.delta, self.is_delta),
                    g,
                    "PAC-Bayes-kl inequality for Q = the prior conditioned on fitting S",
                ),
                DeltaPart(
                    "importance-sampling",
                    self.is_delta,
                    g,
                    "Markov's inequality on the unbiased importance-sampling estimate of P(U)",
                ),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """The report's ``options`` block (without ``method``)."""
        return {
            "kernel": self.kernel,
            "kernel_depth": self.depth,
            "sigma_w": list(self.sigma_w),
            "sigma_b": list(self.sigma_b),
            "jitter": list(self.jitter),
            "num_classes": self.num_classes,
            "kernel_filter_size": self.filter_size,
            "architecture": self.architecture,
            "arch_kwargs": None if self.arch_kwargs is None else dict(self.arch_kwargs),
            "kernel_draws": self.kernel_draws,
            "is_samples": self.is_samples,
            "is_delta": self.is_delta,
            "delta": self.delta,
            "seed": self.seed,
            "max_memory": self.max_memory,
            "batch_size": self.batch_size,
        }


def _depth(params: Mapping[str, Any]) -> int:
    """``--kernel-depth``, or the number of hidden layers of ``--arch mlp``'s kwargs."""
    if params.get("kernel_depth") is not None:
        return check_count(params["kernel_depth"], "--kernel-depth", minimum=0)
    if params.get("arch") == "mlp":
        hidden = (params.get("arch_kwargs") or {}).get("hidden", (600,))
        return len(hidden)
    raise UsageError(
        f"--kernel {params['kernel']} needs the number of hidden layers: give --kernel-depth N "
        "(or --arch mlp, whose --arch-kwargs hidden list gives it)",
        param="--kernel-depth",
    )


def options_from_params(params: Mapping[str, Any]) -> MarginalOptions:
    """The options from click's parsed parameters; UsageError/InvalidInputError for a bad
    value, before anything is loaded."""
    kernel = params["kernel"]
    delta = check_delta(params["delta"], "--delta")
    is_delta = params.get("is_delta")
    if is_delta is None:
        is_delta = delta / 2
    check_delta(is_delta, "--is-delta")
    if not is_delta < delta:
        raise InvalidInputError(
            f"--is-delta ({is_delta:g}) must be smaller than --delta ({delta:g}): the rest of "
            "delta goes to the PAC-Bayes inequality",
            param="--is-delta",
        )
    monte_carlo = kernel == "monte-carlo"
    if monte_carlo and params.get("arch") is None:
        raise UsageError(
            "--kernel monte-carlo draws random initialisations of an architecture: give --arch "
            "(and --arch-kwargs)",
            param="--arch",
        )
    if params.get("checkpoint") is not None and params.get("heldout") is None:
        raise UsageError(
            "--method marginal certifies the prior conditioned on S, not a checkpoint: a "
            "CHECKPOINT is used only for its error on --heldout; give --heldout, or drop "
            "CHECKPOINT",
            param="CHECKPOINT",
        )
    unused = params.get("checkpoint") is None and params.get("kernel_depth") is not None
    if not monte_carlo and unused and params.get("arch") is not None:
        raise UsageError(
            f"--arch is not used by --kernel {kernel} with --kernel-depth and no CHECKPOINT "
            "(it builds a checkpoint, a Monte-Carlo kernel, or gives the depth of --arch "
            "mlp): drop --arch",
            param="--arch",
        )
    conv = kernel == "conv-relu"
    options = MarginalOptions(
        kernel=kernel,
        depth=None if monte_carlo else _depth(params),
        sigma_w=(MONTE_CARLO_POINT[0],) if monte_carlo else _sigmas(params, "sigma_w"),
        sigma_b=(MONTE_CARLO_POINT[1],) if monte_carlo else _sigmas(params, "sigma_b"),
        jitter=_jitters(params["jitters"]),
        delta=delta,
        seed=params["seed"],
        is_samples=check_count(params["is_samples"], "--is-samples", minimum=1),
        is_delta=is_delta,
        filter_size=check_count(params["kernel_filter_size"], "--kernel-filter-size")
        if conv
        else None,
        architecture=params.get("arch") if monte_carlo else None,
        arch_kwargs=dict(params.get("arch_kwargs") or {}) if monte_carlo else None,
        kernel_draws=check_count(params["kernel_draws"], "--kernel-draws", minimum=2)
        if monte_carlo
        else None,
        max_memory=parse_size(params.get("max_memory")),
        batch_size=check_count(params["batch_size"], "--batch-size"),
        num_classes=_classes(params, monte_carlo),
    )
    options.budget()  # validates the δ parts before any work
    return options


def options_from_report(recorded: Mapping[str, Any]) -> MarginalOptions:
    """The options a report's ``options`` block records (InvalidInputError if unreadable)."""
    classes = _recorded_classes(recorded)
    try:
        return MarginalOptions(
            kernel=_known(recorded["kernel"]),
            depth=recorded["kernel_depth"],
            sigma_w=tuple(float(v) for v in recorded["sigma_w"]),
            sigma_b=tuple(float(v) for v in recorded["sigma_b"]),
            jitter=_recorded_jitter(recorded["jitter"]),
            delta=recorded["delta"],
            seed=recorded["seed"],
            is_samples=recorded["is_samples"],
            is_delta=recorded["is_delta"],
            filter_size=recorded["kernel_filter_size"],
            architecture=recorded["architecture"],
            arch_kwargs=recorded["arch_kwargs"],
            kernel_draws=recorded["kernel_draws"],
            max_memory=recorded["max_memory"],
            batch_size=recorded["batch_size"],
            num_classes=classes,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"the report's marginal options cannot be read by this version ({exc!r}); verify "
            "it with the pacbound version that wrote it"
        ) from None


def _jitters(value: Any) -> tuple[float, ...]:
    """``--jitter`` (values > 0) as a grid: part of the prior, fixed before S is seen."""
    values = parse_grid(value, "--jitter") if isinstance(value, str) else (value,)
    for v in values:
        check_positive(v, "--jitter")
    return tuple(float(v) for v in values)


def _recorded_jitter(value: Any) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    return tuple(float(v) for v in values)


def _classes(params: Mapping[str, Any], monte_carlo: bool) -> int | None:
    """C, fixed before S is seen: ``--num-classes``, else the targets of ``--label-map``,
    else (``--kernel monte-carlo``) None, the output width of ``--arch`` resolved when the
    network is built; refused (exit 3) when nothing gives it. Never the labels of S: a
    sample that misses a class would otherwise get a prior with fewer GPs, chosen after
    seeing S and not paid for."""
    given = params.get("num_classes")
    mapped = params.get("label_map")
    from_map = None
    if mapped is not None:
        from pacbound.io import LabelMap, parse_label_map

        lmap = mapped if isinstance(mapped, LabelMap) else parse_label_map(str(mapped))
        from_map = lmap.num_classes
    if given is not None:
        given = check_count(given, "--num-classes", minimum=2)
        if from_map is not None and from_map != given:
            raise InvalidInputError(
                f"--num-classes {given} but --label-map maps to {from_map} classes: give one "
                "of them, or make them agree",
                param="--num-classes",
            )
        return int(given)
    if from_map is not None:
        if from_map < 2:
            raise InvalidInputError(
                f"--label-map {mapped} maps to one class only: the prior needs two classes or "
                "more; give a map with two targets or more (or --num-classes)",
                param="--label-map",
            )
        return int(from_map)
    if monte_carlo:
        return None  # the output width of --arch (resolve_classes)
    raise InvalidInputError(
        "--method marginal needs the number of classes C before it reads the labels (a prior "
        "of C GPs chosen from the labels of S would be a choice made after seeing S): give "
        "--num-classes C (e.g. --num-classes 10) or a --label-map",
        param="--num-classes",
    )


def _recorded_classes(recorded: Mapping[str, Any]) -> int:
    if recorded.get("num_classes") is None:
        raise InvalidInputError(
            "the report's marginal options record no num_classes (it was written before C "
            "was fixed in advance, when C came from the labels of S): certify it again with "
            "--num-classes or --label-map"
        )
    return check_count(recorded["num_classes"], "num_classes", minimum=2)


def resolve_classes(options: MarginalOptions, width: Any) -> MarginalOptions:
    """The options with C set: unchanged when it is already fixed, else (a Monte-Carlo
    kernel) ``width()``, the output width of ``--arch``, fixed before S is seen."""
    if options.num_classes is not None:
        return options
    from dataclasses import replace

    classes = int(width())
    if classes < 2:
        raise InvalidInputError(
            f"--arch gives {classes} output: the Monte-Carlo prior needs two classes or more; "
            "give --num-classes or an --arch with two outputs or more",
            param="--num-classes",
        )
    return replace(options, num_classes=classes)


def _sigmas(params: Mapping[str, Any], name: str) -> tuple[float, ...]:
    """``--sigma-w`` (values > 0) or ``--sigma-b`` (values ≥ 0) as a grid."""
    flag = "--" + name.replace("_", "-")
    values = parse_grid(params[name], flag)
    if name == "sigma_w" and min(values) <= 0:
        raise InvalidInputError(f"{flag} values must be > 0, got {min(values)!r}", param=flag)
    return values


def _known(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}")
    return kernel

"""The marginal method of the registry: ``certify --method marginal`` (MATH.md §12).

:data:`MARGINAL` implements :class:`~pacbound.certify.method.Method` without a checkpoint:

* ``run``: check the memory budget (before any work), certify every kernel grid point and
  keep the smallest certified bound (:func:`~pacbound.certify.marginal.choose_kernel`); the
  hypothesis is a small JSON file naming the chosen kernel (``--save-kernel``);
* ``rederive``: read that file, check that it names a point of the options' grid, and run the
  same certify phase on it (:func:`~pacbound.certify.marginal.certify_point`): the kernel,
  EP and the importance-sampling lower bound recomputed from the recorded seeds.

A checkpoint, when given, only adds its held-out error beside Q's (for information).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from pacbound.certify.common import Timer
from pacbound.certify.marginal import (
    UNSAFE_SLACK,
    PointCertificate,
    Sample,
    certify_point,
    choose_kernel,
)
from pacbound.certify.marginal_facts import marginal_facts
from pacbound.certify.marginal_heldout import HeldoutSet
from pacbound.certify.marginal_kernel import check_memory, kernel_spec
from pacbound.certify.marginal_options import (
    ANALYTIC,
    MarginalOptions,
    options_from_params,
    options_from_report,
    resolve_classes,
)
from pacbound.certify.method import (
    Certificate,
    Facts,
    HypothesisFile,
    MethodRun,
    OptionRule,
    RunInputs,
)
from pacbound.errors import InvalidInputError

#: The hypothesis file's format name and version.
FORMAT = "pacbound-marginal-kernel"
VERSION = 1


def _kernel_is(*names: str) -> OptionRule:
    return OptionRule(
        f"--kernel {' or '.join(names)}",
        lambda p: p.get("kernel") in names,
        lambda p: f"--kernel {p.get('kernel')}",
    )


PARAMETERS: dict[str, OptionRule | None] = {
    **dict.fromkeys(
        ("kernel", "jitters", "num_classes", "is_samples", "is_delta", "save_kernel", "max_memory")
    ),
    **dict.fromkeys(("kernel_depth", "sigma_w", "sigma_b"), _kernel_is(*ANALYTIC)),
    "kernel_filter_size": _kernel_is("conv-relu"),
    "kernel_draws": _kernel_is("monte-carlo"),
}


class MarginalMethod:
    """PAC-Bayes for the architecture's GP prior conditioned on fitting S (module doc)."""

    name: str = "marginal"
    description: str = (
        "PAC-Bayes for the architecture's GP prior conditioned on fitting S (the random "
        "sampler; no checkpoint needed)"
    )
    hypothesis: HypothesisFile = HypothesisFile("kernel", "--save-kernel")
    parameters: Mapping[str, OptionRule | None] = PARAMETERS
    #: every grid point's certified bound: how the kernel was chosen (verify re-derives the
    #: chosen point only; the union bound over the grid pays for the choice)
    #: ``ep.max_change`` (EP's last step, a convergence diagnostic: a difference of nearly
    #: equal numbers, so not reproducible to 1e-9 across BLAS builds) is not compared either
    choice_fields: tuple[str, ...] = ("search", "ep.max_change")
    #: runs without a checkpoint (``pacbound.certify.registry.needs_checkpoint``)
    needs_checkpoint: bool = False
    #: the kernel's Cholesky factor, EP and the importance weights go through LAPACK, whose
    #: rounding depends on the BLAS thread count and CPU (measured: 3e-16 relative between
    #: OPENBLAS_NUM_THREADS=1 and 2); verify accepts float leaves within 1e-9 relative
    float_rel_tol: float = 1e-9
    #: the bound-side leaves, compared one-sidedly (``pacbound.verify.fields.on_safe_side``):
    #: a reported one may lie at most ``unsafe_rel_tol`` on the unsafe side of verify's
    #: recomputation, which the margin certify paid inside them
    #: (:data:`~pacbound.certify.marginal.REPRODUCIBILITY_MARGIN`) covers ten times over
    bound_fields: Mapping[str, str] = MappingProxyType(
        {
            "bound": "upper",
            "kl_nats": "upper",
            "certificate_terms.value": "upper",
            "certificate_terms.complexity_nats": "upper",
            "certificate_terms.terms.kl": "upper",
            "certificate_terms.terms.log_p_u_lower": "lower",
            "log_orthant.log_lower": "lower",
            "certificate_terms.terms.rhs": "upper",
            # no LAPACK call touches these: bit for bit
            "delta_budget": "exact",
            "certificate_terms.delta": "exact",
            "certificate_terms.terms.log_term": "exact",
            "log_orthant.delta": "exact",
            # the prior's hyperparameters, the constants and the chance level: from the options
            "kernel": "exact",
            "verdict": "exact",
            "empirical_risk": "exact",
            "certificate_terms.empirical_risk": "exact",
            "log_orthant.reproducibility_margin": "exact",
        }
    )
    unsafe_rel_tol: float = UNSAFE_SLACK

    def options(self, params: Mapping[str, Any]) -> MarginalOptions:
        return options_from_params(params)

    def options_from_report(self, recorded: Mapping[str, Any]) -> MarginalOptions:
        return options_from_report(recorded)

    def run(self, inputs: RunInputs, options: MarginalOptions) -> MethodRun:
        options = _resolve_memory(options, inputs)
        options = resolve_classes(options, lambda: _arch_width(options, inputs))
        sample, heldout = _prepare(inputs, options)
        timer = Timer()
        point, search = choose_kernel(
            sample, options, heldout=heldout, device=inputs.device, timer=timer
        )
        cert = _certificate(point, {**point.results, "search": search}, timer, options)
        return MethodRun(certificate=cert, options=self.record_options(options))

    def rederive(
        self, inputs: RunInputs, options: MarginalOptions, hypothesis: bytes
    ) -> Certificate:
        sample, heldout = _prepare(inputs, options)
        index = _read_hypothesis(hypothesis, options, sample.classes)
        timer = Timer()
        point = certify_point(
            index, sample, options, heldout=heldout, device=inputs.device, timer=timer
        )
        return _certificate(point, point.results, timer, options)

    def record_options(self, options: MarginalOptions) -> dict[str, Any]:
        return {"method": self.name, **options.to_dict()}

    def facts(self, results: Mapping[str, Any]) -> Facts:
        return marginal_facts(results)


#: The registry entry (``pacbound.certify.registry.METHODS["marginal"]``).
MARGINAL = MarginalMethod()


def _resolve_memory(options: MarginalOptions, inputs: RunInputs) -> MarginalOptions:
    """``--max-memory auto``: the default fraction of the device's memory, recorded."""
    if options.max_memory is not None:
        return options
    from dataclasses import replace

    from pacbound.posterior.layers import default_max_memory

    return replace(options, max_memory=default_max_memory(inputs.device))


def _arch_width(options: MarginalOptions, inputs: RunInputs) -> int:
    """The output width of ``--arch`` (a Monte-Carlo kernel's C when nothing else gives it):
    one network built from the kernel seed, one input's forward pass (the labels unread)."""
    from pacbound.certify.common import model_num_outputs
    from pacbound.certify.marginal_kernel import network_factory
    from pacbound.certify.marginal_options import derived_seed

    module = network_factory(options)(derived_seed(options.seed, "kernel"))
    return model_num_outputs(module.to(inputs.device), inputs.data.x[0:1].float(), inputs.device)


def _labels(y: Any, classes: int, option: str, path: Any) -> np.ndarray:
    """The labels as int64, each in 0..C−1 (exit 3 naming the file otherwise)."""
    labels = y.cpu().numpy().astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = int(labels.max() if labels.max() >= classes else labels.min())
        raise InvalidInputError(
            f"{option} {path} holds the label {bad}, outside 0..{classes - 1} for the C = "
            f"{classes} classes fixed in advance: give the right --num-classes (fixed before "
            "reading the labels) or a --label-map that covers every label",
            param=option,
        )
    return labels


def _prepare(inputs: RunInputs, options: MarginalOptions) -> tuple[Sample, HeldoutSet | None]:
    """The sample as the kernel sees it and the held-out set, after the checks that cost
    nothing (C fixed in advance and every label below it, the memory budget)."""
    data = inputs.data
    n = data.n
    if options.num_classes is None:
        raise InvalidInputError("the number of classes is not fixed: give --num-classes")
    classes = options.num_classes
    labels = _labels(data.y, classes, "--data", data.provenance.path)
    budget = options.max_memory
    if budget is not None:
        check_memory(n, classes, budget)
    heldout = None
    if inputs.heldout is not None:
        if budget is not None:
            check_memory(n + inputs.heldout.n, classes, budget, "--data with --heldout")
        heldout = HeldoutSet(
            inputs.heldout.x[0 : inputs.heldout.n],
            _labels(inputs.heldout.y, classes, "--heldout", inputs.heldout.provenance.path),
            _checkpoint_error(inputs, options),
        )
    sample = Sample(
        x=data.x[0:n],
        labels=labels,
        classes=classes,
        label_map=data.provenance.label_map,
    )
    return sample, heldout


def _checkpoint_error(inputs: RunInputs, options: MarginalOptions) -> float | None:
    """The checkpoint's held-out error (for information), when a checkpoint was given."""
    if inputs.checkpoint is None or inputs.heldout is None:
        return None
    from pacbound.posterior.risk import count_errors

    count = count_errors(
        inputs.checkpoint.module,
        inputs.heldout.x,
        inputs.heldout.y,
        batch_size=options.batch_size,
        device=inputs.device,
    )
    return float(count.rate)


def hypothesis_bytes(point: PointCertificate, options: MarginalOptions) -> bytes:
    """The ``--save-kernel`` file: the chosen kernel and its place in the grid (JSON)."""
    document = {
        "format": FORMAT,
        "version": VERSION,
        "kernel": point.spec.to_dict(),
        "grid_index": point.index,
        "grid": [list(p) for p in options.grid()],
    }
    return (json.dumps(document, sort_keys=True, indent=1) + "\n").encode()


def _read_hypothesis(payload: bytes, options: MarginalOptions, classes: int) -> int:
    """The grid index a ``--save-kernel`` file names, checked against the options' grid."""
    try:
        document = json.loads(payload.decode("utf-8"))
        if document["format"] != FORMAT or document["version"] != VERSION:
            raise ValueError("not a marginal kernel file")
        index = int(document["grid_index"])
        kernel, grid = document["kernel"], document["grid"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(
            f"the kernel file is not a pacbound marginal kernel file ({exc}); it is corrupted "
            "or of another kind"
        ) from None
    if grid != [list(p) for p in options.grid()] or not 0 <= index < options.grid_size:
        raise InvalidInputError(
            "the kernel file's grid is not the one the report's options give (kernel.grid)"
        )
    if kernel != kernel_spec(options, index, classes).to_dict():
        raise InvalidInputError(
            f"the kernel file's kernel is not grid point {index} of the report's options "
            "(kernel (file))"
        )
    return index


def _certificate(
    point: PointCertificate, results: Mapping[str, Any], timer: Timer, options: MarginalOptions
) -> Certificate:
    return Certificate(
        method=MARGINAL.name,
        bound=point.bound,
        budget=point.budget,
        verdict=point.verdict,
        results=results,
        hypothesis=hypothesis_bytes(point, options),
        timings=dict(timer.seconds),
    )

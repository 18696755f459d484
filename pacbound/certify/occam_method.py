"""What the two compression methods share as :class:`~pacbound.certify.method.Method`\\ s:
options, the run (choose, then the certify phase of :mod:`pacbound.certify.occam`), the
re-derivation from a saved artifact, and the facts that tables, plots and summaries show.

Each method (:mod:`pacbound.certify.subspace`, :mod:`pacbound.certify.quantize`) adds only
its name, its own options and its choose phase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from pacbound.bounds import format_up
from pacbound.certify.compressed_checkpoint import CheckpointSets
from pacbound.certify.factories import RunFactory, run_factory
from pacbound.certify.method import (
    Certificate,
    Facts,
    HypothesisFile,
    MethodRun,
    OptionRule,
    RunInputs,
    SearchCurve,
)
from pacbound.certify.occam import Choice, certify_message, check_data, method_of
from pacbound.certify.occam_options import (
    CompressionMethod,
    CompressionOptions,
    options_from_params,
    options_from_report,
)
from pacbound.compressors import CompressedMessage, ModelFactory

#: The options every compression method uses (click parameter names).
SHARED_PARAMETERS = (
    "levels",
    "codebook",
    "precision",
    "qat_steps",
    "qat_examples",
    "qat_lr",
    "artifact",
)


class OccamMethod:
    """A compression method: subclasses set ``name``, ``description``, ``classifier`` (a
    short label for tables), ``own_parameters`` (the click parameters only they use) and
    :meth:`choose`."""

    name: str
    description: str
    classifier: str
    own_parameters: tuple[str, ...]
    hypothesis = HypothesisFile(key="artifact", option="--artifact")
    #: how the message was chosen: every candidate tried, and where training started
    choice_fields: tuple[str, ...] = ("search", "compression.start")
    needs_checkpoint: bool = True
    float_rel_tol: float = 0.0  # bit for bit

    def __init__(self) -> None:
        self.parameters: Mapping[str, OptionRule | None] = dict.fromkeys(
            (*SHARED_PARAMETERS, *self.own_parameters)
        )

    def options(self, params: Mapping[str, Any]) -> CompressionOptions:
        return options_from_params({**params, "method": self.name})

    def options_from_report(self, recorded: Mapping[str, Any]) -> CompressionOptions:
        return options_from_report(recorded)

    def choose(
        self, inputs: RunInputs, factory: ModelFactory, options: CompressionOptions
    ) -> tuple[bytes, Choice]:
        """The best message's bytes and the record of the search."""
        raise NotImplementedError

    def _factory(self, inputs: RunInputs, options: CompressionOptions) -> RunFactory:
        check_data(inputs.data.x, inputs.data.y, inputs.data.num_classes)
        return run_factory(
            inputs.loaded,
            self.name,
            seed=options.seed,
            init=inputs.init,
            unsafe_allow_pickle=inputs.unsafe_allow_pickle,
        )

    def run(self, inputs: RunInputs, options: CompressionOptions) -> MethodRun:
        """Choose the message, then certify it with the statements about the checkpoint;
        the hypothesis is the message's bytes (``--artifact``)."""
        made = self._factory(inputs, options)
        payload, choice = self.choose(inputs, made.factory, options)
        certificate = _certify(inputs, made.factory, options, payload, choice)
        return MethodRun(
            certificate=certificate,
            options=self.record_options(options),
            inputs={} if made.init_record is None else {"init": made.init_record},
            warnings=() if made.warning is None else (made.warning,),
        )

    def rederive(
        self, inputs: RunInputs, options: CompressionOptions, hypothesis: bytes
    ) -> Certificate:
        """The certify phase of :meth:`run` on a saved artifact."""
        made = self._factory(inputs, options)
        return _certify(inputs, made.factory, options, hypothesis, None)

    def record_options(self, options: CompressionOptions) -> dict[str, Any]:
        return options.report_options()

    def facts(self, results: Mapping[str, Any]) -> Facts:
        return occam_facts(self.classifier, results)


def _certify(
    inputs: RunInputs,
    factory: ModelFactory,
    options: CompressionOptions,
    payload: bytes,
    choice: Choice | None,
) -> Certificate:
    heldout = inputs.heldout
    sets = CheckpointSets(
        inputs.loaded.module,
        heldout=None if heldout is None else (heldout.x, heldout.y),
        unlabeled=None if inputs.unlabeled is None else inputs.unlabeled.x,
    )
    return certify_message(
        payload,
        factory,
        inputs.data.x,
        inputs.data.y,
        options=options,
        seed=options.seed,
        checkpoint=sets,
        choice=choice,
        device=inputs.device,
    )


def verify_artifact(
    payload: bytes,
    factory: ModelFactory,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    options: CompressionOptions,
    device: torch.device | None = None,
) -> Certificate:
    """``verify ARTIFACT``: the certify phase on an artifact without its checkpoint (so no
    statements about it), the seed and method read from the artifact's own header.

    ``options`` are the report's (``options_from_report``) or, without a report, a
    :class:`CompressionOptions` with the ``delta`` and ``batch_size`` to use.
    """
    check_data(x, y, num_classes)
    return certify_message(payload, factory, x, y, options=options, seed=None, device=device)


def artifact_options(
    message: CompressedMessage, recorded: Mapping[str, Any], *, delta: float, batch_size: int
) -> CompressionOptions:
    """The options of ``verify ARTIFACT``: a compression report's recorded ``options`` block
    (empty without a report: the defaults of the artifact's own method), with the ``delta``
    and ``batch_size`` to use."""
    if recorded.get("method") in {m.value for m in CompressionMethod}:
        base = options_from_report(recorded)
    else:
        base = CompressionOptions(method=method_of(message))
    return replace(base, delta=delta, batch_size=batch_size)


def occam_facts(classifier: str, results: Mapping[str, Any]) -> Facts:
    """What tables, plots, the terminal and the step summary show of a compression results
    block (the bound's parts, the search over code lengths, the table rows)."""
    upper = results["empirical_risk"]["upper_bound"]
    occam = results["delta_budget"]["parts"][0]
    points = sorted(results["search"], key=lambda c: c["code_length_bits"])
    search = SearchCurve(
        label="code length (bits)",
        x=tuple(float(c["code_length_bits"]) for c in points),
        bound=tuple(c["bound"] for c in points),
        chosen=float(results["code_length_bits"]),
    )
    return Facts(
        classifier=classifier,
        empirical_risk_upper=upper,
        kl_nats=None,
        code_length_bits=results["code_length_bits"],
        qualifiers={},
        risk_parts=(("empirical risk k/n", upper),),
        complexity_parts=(
            ("code length K ln 2", results["code_length_nats"]),
            ("δ term ln(1/δ)", math.log(1.0 / occam["per_choice"])),
        ),
        search=search,
        rows=(*_certificate_rows(results), *_checkpoint_rows(results)),
    )


def _certificate_rows(res: Mapping[str, Any]) -> list[tuple[str, str]]:
    comp, emp = res["compression"], res["empirical_risk"]
    rows = [
        ("n (training examples)", str(res["n"])),
        ("errors of the decoded model", f"{emp['errors']} ({emp['estimate']:.6f})"),
        ("code length", f"{res['code_length_bits']} bits"),
    ]
    rows += [(f"  {part}", f"{bits} bits") for part, bits in res["code_length_breakdown"].items()]
    dim = f"d = {comp['dimension']}, " if comp["dimension"] is not None else ""
    rows.append(("compression", f"{comp['kind']}: {dim}L = {comp['levels']}, seed {comp['seed']}"))
    rows += [(f"δ: {p['name']}", f"{p['delta']:.6g}") for p in res["delta_budget"]["parts"]]
    return rows


def _checkpoint_rows(res: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The checkpoint's side: training comparison, held-out bound, certificate (rounded up)."""
    rows = []
    train = res.get("checkpoint_on_training")
    if train is not None:
        rows.append(
            (
                "errors of the checkpoint",
                f"{train['errors']} ({train['empirical_risk']:.6f}, training data)",
            )
        )
        rows.append(
            (
                "decoded ≠ checkpoint",
                f"{train['disagreements_with_decoded']} of {train['n']} predictions "
                f"({train['disagreement_rate']:.6f}, training data)",
            )
        )
    h = res.get("heldout")
    if h is not None:
        rows.append(
            (
                "held-out bound (checkpoint)",
                f"{format_up(h['bound'], 4)}  ({h['errors']}/{h['n']} errors, "
                f"δ = {h['delta']:g}, separate statement)",
            )
        )
    c = res.get("checkpoint")
    if c is not None:
        d = c["disagreement"]
        rows.append(
            (
                "bound on the checkpoint itself",
                f"{format_up(c['bound'], 4)}  (decoded {format_up(c['bound_on_certified'], 4)}"
                f" + disagreement {format_up(d['upper_bound'], 4)} from {d['disagreements']}/"
                f"{d['inputs']} {d['source']} inputs; δ = {c['delta_total']:.6g} in all)",
            )
        )
    return rows

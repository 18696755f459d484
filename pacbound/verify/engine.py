"""Re-derive a report's certificate through the method's own certify phase, and compare.

:func:`verify_report` is what ``pacbound verify REPORT`` runs:

1. every input file the report records must still have its sha256 (a changed or missing file
   is bad input, exit 3, named);
2. the checkpoint and data sets are reloaded as recorded into a
   :class:`~pacbound.certify.method.RunInputs`, the options are read back with the method's
   ``options_from_report``, and the saved hypothesis (``inputs.<method.hypothesis.key>``: the
   posterior file, the compressed artifact) is read;
3. the method's ``rederive`` runs **the same certify phase** ``certify`` ran on that
   hypothesis (KL or code length, Monte-Carlo risk or error count, bound, δ budget, verdict,
   the statements about the checkpoint) — nothing is re-implemented here;
4. the re-derived results block is compared with the reported one leaf by leaf
   (:func:`~pacbound.verify.fields.compare_results`, skipping only the method's
   ``choice_fields``), after the check that ``results_sha256`` covers the reported block.

On the same machine and versions every field is expected to agree *exactly*; any difference
means different inputs, code or numerics. :func:`verify_artifact_report` compares an artifact
re-derived without a report (``verify ARTIFACT --report``) the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pacbound.certify.method import Certificate, Method
from pacbound.certify.registry import METHODS, with_hypothesis
from pacbound.errors import InvalidInputError
from pacbound.report.validate import hash_agrees, refuse_older
from pacbound.verify.fields import FieldCheck, Verification, compare_results
from pacbound.verify.recorded import check_input_files, import_path, recorded_inputs, resolve


def verify_report(
    report: Mapping[str, Any],
    *,
    root: Path,
    device: torch.device | None = None,
    unsafe_allow_pickle: bool = False,
) -> Verification:
    """Check the input files, then re-derive every certificate field (see module docstring).

    ``root`` is where relative input paths start, and is put on ``sys.path`` while the
    report's architecture is imported."""
    method = report_method(report)
    refuse_older(report)
    key = method.hypothesis.key
    if key not in report["inputs"]:
        raise InvalidInputError(
            f"the report records no {key} file (inputs.{key}), so its certificate cannot be "
            f"re-derived; rerun certify with {method.hypothesis.option}"
        )
    with import_path(root):
        check_input_files(report, root)
        inputs = recorded_inputs(
            report,
            root,
            device or torch.device("cpu"),
            unsafe_allow_pickle=unsafe_allow_pickle,
        )
        options = method.options_from_report(report["options"])
        hypothesis = resolve(report["inputs"][key]["path"], root).read_bytes()
        certificate = method.rederive(inputs, options, hypothesis)
    return Verification(
        method.name, (hash_check(report), *results_checks(method, report, certificate))
    )


def report_method(report: Mapping[str, Any]) -> Method:
    """The registered method a report's certificate was made with (bad input otherwise)."""
    name = report["results"]["method"]
    if name not in METHODS:
        raise InvalidInputError(
            f"the report's method {name!r} is not one this pacbound knows "
            f"({', '.join(METHODS)}); verify it with the pacbound version that wrote it"
        )
    return METHODS[name]


def hash_check(report: Mapping[str, Any]) -> FieldCheck:
    """Whether ``results_sha256`` covers the reported results block as it stands."""
    return FieldCheck(
        "results_sha256",
        report["results_sha256"],
        report["results_sha256"] if hash_agrees(dict(report)) else "(does not match the results)",
    )


def results_checks(
    method: Method, report: Mapping[str, Any], certificate: Certificate
) -> list[FieldCheck]:
    """The reported results against the re-derived certificate's, leaf by leaf (a method's
    bound-side leaves one-sidedly: :func:`tolerances`)."""
    return compare_results(
        report["results"],
        certificate.results,
        skip=tuple(method.choice_fields),
        **tolerances(method),
    )


def tolerances(method: Method) -> dict[str, Any]:
    """How a method's floats are compared: ``float_rel_tol`` (0: bit for bit), and the
    bound-side leaves a method with a tolerance names (``bound_fields``, compared within
    ``unsafe_rel_tol`` on their unsafe side; none for a method compared exactly)."""
    return {
        "rel_tol": method.float_rel_tol,
        "sides": dict(getattr(method, "bound_fields", {})),
        "unsafe_rel_tol": float(getattr(method, "unsafe_rel_tol", 0.0)),
    }


def _data_identity(
    record: Mapping[str, Any], like: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What makes two loads of a data set the same sample (paths may differ); the format,
    shape and scaling fields only where ``like`` (the report's record) has them."""
    keys = ("n", "split", "label_column", "label_map", "normalization", "subset_indices")
    fields = ("x_key", "y_key", "csv_delimiter", "input_shape", "scaling")
    loaded = [k for k in fields if k in (record if like is None else like)]
    return {
        "sha256": [f["sha256"] for f in record["files"]],
        **{k: record[k] for k in keys},
        **{k: record.get(k) for k in loaded},
    }


def verify_artifact_report(
    report: Mapping[str, Any],
    certificate: Certificate,
    *,
    artifact_sha256: str,
    data: Mapping[str, Any],
    theta0_sha256: str | None = None,
) -> Verification:
    """Check an artifact re-derived by ``pacbound verify ARTIFACT`` against a saved report.

    ``certificate`` is the artifact's certificate re-derived on the data set recorded as
    ``data`` (``DatasetProvenance.to_dict()``) without the checkpoint; its results are
    compared leaf by leaf with the report's, under the top-level fields it has (the
    statements about the checkpoint need the checkpoint: REPORT mode checks them). The
    artifact's sha256 must be the one in ``inputs.artifact`` (when the report records one),
    the data the recorded sample, and θ₀'s content hash (``theta0_sha256``, for an artifact
    decoded with ``--init``) the one in ``inputs.init``.
    """
    method = artifact_report_method(report)
    checks = [hash_check(report)]
    recorded = report["inputs"].get("artifact")
    if recorded is not None:
        checks.append(FieldCheck("inputs.artifact.sha256", recorded["sha256"], artifact_sha256))
    checks.append(
        FieldCheck(
            "inputs.data",
            _data_identity(report["inputs"]["data"]),
            _data_identity(data, like=report["inputs"]["data"]),
        )
    )
    recorded_init = report["inputs"].get("init")
    if recorded_init is not None or theta0_sha256 is not None:
        checks.append(
            FieldCheck(
                "inputs.init.theta0_sha256",
                None if recorded_init is None else recorded_init.get("theta0_sha256"),
                theta0_sha256,
            )
        )
    results = report["results"]
    rederived = certificate.results
    shared = {k: v for k, v in results.items() if k in rederived}
    checks += compare_results(
        shared, rederived, skip=tuple(method.choice_fields), **tolerances(method)
    )
    return Verification(method.name, tuple(checks))


def artifact_report_method(report: Mapping[str, Any]) -> Method:
    """The method of a report an artifact is checked against: one whose hypothesis is a
    compressed artifact, in the current schema (bad input otherwise)."""
    method = report_method(report)
    if method.hypothesis.key != "artifact":
        raise InvalidInputError(
            f"--report is a {method.name} report; an artifact can only be checked against a "
            f"report of {' or '.join(with_hypothesis('artifact'))}",
            param="--report",
        )
    refuse_older(report)
    return method

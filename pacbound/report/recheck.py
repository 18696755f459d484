"""Re-derive a report's certificate from its saved artifacts and the same data.

``pacbound verify`` calls :func:`verify_report`. It first checks that every input file the
report records still has its recorded sha256 (a changed or missing file is bad input, named),
then recomputes the certificate the way ``certify`` did and lists each field with the
reported and the recomputed value. On the same machine and versions every field is expected
to agree *exactly*; any difference means different inputs, code or numerics.

* Gaussian: the posterior file (``inputs.posterior``) gives μ, σ, the prior mean and σ_p; the
  KL is recomputed from it, the prior mean is compared with the ``--init`` weights (or zero),
  the σ_p choice is redone over the grid, the Monte-Carlo draws are replayed with the same
  seed stream (``SEED_OFFSETS["monte_carlo"]``), and the bounds are recomputed.
* subspace/quantize: the artifact (``inputs.artifact``) is decoded by
  :func:`pacbound.certify.compression.verify_artifact`, its errors recounted and its Occam
  bound recomputed.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pacbound.errors import InvalidInputError
from pacbound.report.validate import hash_agrees


@dataclass(frozen=True)
class FieldCheck:
    """One re-derived field: what the report says, what was recomputed, whether they agree."""

    field: str
    reported: Any
    recomputed: Any

    @property
    def agree(self) -> bool:
        return bool(_same(self.reported, self.recomputed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "reported": self.reported,
            "recomputed": self.recomputed,
            "agree": self.agree,
        }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return False
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


@dataclass(frozen=True)
class Verification:
    """All field checks of one report."""

    method: str
    checks: tuple[FieldCheck, ...]

    @property
    def agree(self) -> bool:
        return all(c.agree for c in self.checks)

    @property
    def disagreeing(self) -> list[str]:
        return [c.field for c in self.checks if not c.agree]

    def recomputed(self, field: str) -> Any:
        """The recomputed value of ``field`` (KeyError when it was not checked)."""
        for check in self.checks:
            if check.field == field:
                return check.recomputed
        raise KeyError(field)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "agree": self.agree,
            "fields": [c.to_dict() for c in self.checks],
        }


@contextmanager
def import_path(root: Path) -> Iterator[None]:
    """``root`` first on ``sys.path`` for the block (restored afterwards): a report made with
    ``--arch mymodule:factory`` finds the user's module next to the report."""
    saved = list(sys.path)
    sys.path.insert(0, str(root.resolve()))
    try:
        yield
    finally:
        sys.path[:] = saved


def _resolve(path: str, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def recorded_files(report: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(what, path, sha256) of every input file the report records."""
    inputs = report["inputs"]
    ckpt = inputs["model"]["provenance"]["checkpoint"]
    yield "checkpoint", ckpt["path"], ckpt["sha256"]
    for key in ("data", "heldout", "unlabeled"):
        if key in inputs:
            for record in inputs[key]["files"]:
                yield f"{key} file", record["path"], record["sha256"]
    for key in ("init", "posterior", "artifact"):
        if key in inputs:
            yield f"{key} file", inputs[key]["path"], inputs[key]["sha256"]


def check_input_files(report: dict[str, Any], root: Path) -> None:
    """Raise InvalidInputError naming the first input file that is missing or changed."""
    from pacbound.io import sha256_file

    for what, path, expected in recorded_files(report):
        file = _resolve(path, root)
        if not file.is_file():
            raise InvalidInputError(
                f"the {what} {file} recorded in the report does not exist; run verify from the "
                "folder certify ran in, or pass --root"
            )
        actual = sha256_file(file)
        if actual != expected:
            raise InvalidInputError(
                f"the {what} {file} changed since the report was written: its sha256 is "
                f"{actual[:12]}…, the report recorded {expected[:12]}…"
            )


def _normalization(text: str | None) -> Any:
    if text is None:
        return None
    from pacbound.io import Normalization

    match = re.fullmatch(r"mean=\[(.*)\], std=\[(.*)\]", text)
    if match is None:
        raise InvalidInputError(f"cannot read the recorded normalization {text!r}")
    mean, std = (tuple(float(v) for v in g.split(",")) for g in match.groups())
    return Normalization(mean, std)


def load_recorded_dataset(record: dict[str, Any], root: Path) -> Any:
    """The data set exactly as the report describes it (split, labels, format options,
    shape and scaling rules, normalization)."""
    from pacbound.io import load_dataset, recorded_load_options

    return load_dataset(
        _resolve(record["path"], root),
        normalize=_normalization(record["normalization"]),
        **recorded_load_options(record),
    )


def load_recorded_model(
    report: dict[str, Any], root: Path, device: torch.device, *, unsafe_allow_pickle: bool = False
) -> Any:
    from pacbound.io import load_model

    prov = report["inputs"]["model"]["provenance"]
    # the prefix certify stripped (--strip-prefix, or DataParallel's module.); a model that
    # is its own architecture (.pt2, whole pickle) is loaded as it is
    prefix = prov["checkpoint"].get("stripped_prefix") if prov["architecture"] else None
    return load_model(
        _resolve(prov["checkpoint"]["path"], root),
        arch=prov["architecture"],
        arch_kwargs=prov["arch_kwargs"],
        unsafe_allow_pickle=unsafe_allow_pickle,
        device=device,
        strip_prefix=prefix,
    )


def verify_report(
    report: dict[str, Any],
    *,
    root: Path,
    device: torch.device | None = None,
    unsafe_allow_pickle: bool = False,
) -> Verification:
    """Check the input files, then re-derive every certificate field (see module docstring).

    ``root`` is where relative input paths start, and is put on ``sys.path`` while the
    report's architecture is imported."""
    with import_path(root):
        return _verify_report(
            report, root=root, device=device, unsafe_allow_pickle=unsafe_allow_pickle
        )


def _verify_report(
    report: dict[str, Any], *, root: Path, device: torch.device | None, unsafe_allow_pickle: bool
) -> Verification:
    dev = device or torch.device("cpu")
    method = report["results"]["method"]
    needed = "posterior" if method == "gaussian" else "artifact"
    if needed not in report["inputs"]:
        hint = (
            "rerun certify with --save-posterior"
            if method == "gaussian"
            else "the report must record the compressed artifact"
        )
        raise InvalidInputError(
            f"the report records no {needed} file (inputs.{needed}), so its certificate cannot "
            f"be re-derived; {hint}"
        )
    check_input_files(report, root)
    if method == "gaussian":
        from pacbound.report.recheck_gaussian import recheck_gaussian

        checks = recheck_gaussian(
            report, root=root, device=dev, unsafe_allow_pickle=unsafe_allow_pickle
        )
    else:
        checks = _recheck_compression(
            report, root=root, device=dev, unsafe_allow_pickle=unsafe_allow_pickle
        )
    return Verification(method, (_hash_check(report), *checks))


def _hash_check(report: dict[str, Any]) -> FieldCheck:
    return FieldCheck(
        "results_sha256",
        report["results_sha256"],
        report["results_sha256"] if hash_agrees(report) else "(does not match the results)",
    )


def _recheck_compression(
    report: dict[str, Any], *, root: Path, device: torch.device, unsafe_allow_pickle: bool
) -> list[FieldCheck]:
    from pacbound.certify.compression import verify_artifact
    from pacbound.certify.factories import factory_for

    res, opts = report["results"], report["options"]
    init = report["inputs"].get("init")
    # the factory certify used: the recorded architecture, or the .pt2 program / pickled
    # model itself, with θ₀ from the init file (read with the recorded --strip-prefix)
    loaded = load_recorded_model(
        report, root, torch.device("cpu"), unsafe_allow_pickle=unsafe_allow_pickle
    )
    factory = factory_for(
        loaded,
        res["method"],
        init=None if init is None else _resolve(init["path"], root),
        unsafe_allow_pickle=unsafe_allow_pickle,
    )
    if init is not None:  # certify's rule: θ₀ must not be the trained weights
        from pacbound.io import refuse_trained_init

        refuse_trained_init(factory.state, loaded)  # type: ignore[attr-defined]
    data = load_recorded_dataset(report["inputs"]["data"], root)
    artifact = _resolve(report["inputs"]["artifact"]["path"], root).read_bytes()
    cert = verify_artifact(
        artifact,
        factory,
        data.x,
        data.y,
        num_classes=data.num_classes,
        delta=opts["delta"],
        seed=res["compression"]["seed"],
        device=device,
        batch_size=opts.get("batch_size", 2048),
    )
    return compression_checks(res, cert.to_dict()) + _checkpoint_statement_checks(
        report, root, cert, loaded.module, factory, data, device
    )


def _checkpoint_statement_checks(
    report: dict[str, Any],
    root: Path,
    cert: Any,
    checkpoint: torch.nn.Module,
    factory: Any,
    data: Any,
    device: torch.device,
) -> list[FieldCheck]:
    """The statements about the checkpoint (training comparison, held-out bound, the
    certificate for the checkpoint itself) recomputed from the recorded sets with certify's
    code; a statement without its recorded set, or a recorded set without its statement,
    disagrees."""
    from pacbound.certify.compressed_checkpoint import compare_with_checkpoint
    from pacbound.report.recheck_statements import load_recorded_features

    res, opts, inputs = report["results"], report["options"], report["inputs"]
    heldout = unlabeled = None
    if "heldout" in inputs:
        held = load_recorded_dataset(inputs["heldout"], root)
        heldout = (held.x, held.y)
    if "unlabeled" in inputs:
        unlabeled = load_recorded_features(inputs["unlabeled"], root).x
    statements = compare_with_checkpoint(
        cert,
        checkpoint,
        factory,
        data.x,
        data.y,
        heldout=heldout,
        unlabeled=unlabeled,
        heldout_delta=opts.get("heldout_delta"),
        disagreement_delta=opts.get("disagreement_delta"),
        batch_size=opts.get("batch_size", 2048),
        device=device,
    ).to_dict()
    names = ("checkpoint_on_training", "heldout", "checkpoint")
    return [
        FieldCheck(name, res.get(name), statements.get(name))
        for name in names
        if name in res or statements.get(name) is not None
    ]


def compression_checks(reported: dict[str, Any], recomputed: dict[str, Any]) -> list[FieldCheck]:
    """A compression results block against a re-derived certificate's ``to_dict()``."""
    names = (
        "certified_classifier",
        "inequality",
        "bound",
        "n",
        "errors",
        "empirical_risk",
        "code_length_bits",
        "code_length_nats",
        "code_length_breakdown",
        "compression.artifact_sha256",
        "delta_budget",
        "verdict",
    )
    return [FieldCheck(name, _get(reported, name), _get(recomputed, name)) for name in names]


def _get(block: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        block = block[key]
    return block


def _data_identity(record: dict[str, Any], like: dict[str, Any] | None = None) -> dict[str, Any]:
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
    report: dict[str, Any],
    certificate: Any,
    *,
    artifact_sha256: str,
    data: dict[str, Any],
    theta0_sha256: str | None = None,
) -> Verification:
    """Check an artifact re-derived by ``pacbound verify ARTIFACT`` against a saved report.

    ``certificate`` is :func:`pacbound.certify.compression.verify_artifact`'s result for the
    artifact whose bytes have ``artifact_sha256``, on the data set recorded as ``data``
    (``DatasetProvenance.to_dict()``). Beyond the recomputed fields of REPORT mode, the
    artifact's sha256 must be the one in ``inputs.artifact`` (when the report records one) and
    the data must be the recorded sample, and θ₀'s content hash (``theta0_sha256``, for an
    artifact decoded with ``--init``) the one in ``inputs.init``.
    """
    res = report["results"]
    if res["method"] == "gaussian":
        raise InvalidInputError(
            "--report is a gaussian (PAC-Bayes) report; an artifact can only be checked against "
            "a --method subspace or quantize report",
            param="--report",
        )
    checks = [_hash_check(report)]
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
    checks.extend(compression_checks(res, certificate.to_dict()))
    return Verification(res["method"], tuple(checks))

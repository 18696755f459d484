"""``pacbound verify``: re-derive a report's certificate, or an artifact's, and compare.

The argument is a JSON report (REPORT mode: everything is re-derived from the report's
recorded inputs) or a compressed artifact, recognised by its magic bytes (ARTIFACT mode: the
artifact is decoded against ``--arch`` on ``--data`` and, with ``--report``, compared with a
saved report field by field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.table import Table

from pacbound.certify.method import Method
from pacbound.certify.registry import METHODS
from pacbound.cli.gate import GateOutcome, recheck_gate
from pacbound.cli.model_options import (
    DATA_KWARGS,
    JSON_OBJECT,
    data_kwargs,
    data_options,
    resolve_dataset,
)
from pacbound.cli.options import FLOAT, INT, json_option, set_report_threads, verify_threads_option
from pacbound.cli.parallel_run import (
    agree_on_inputs,
    agree_on_report,
    check_world_size,
    join_world,
)
from pacbound.cli.terminal import Terminal, emit_json, render_certificate
from pacbound.cli.verify_argv import argv_checks
from pacbound.errors import EXIT_GATE_FAILED, EXIT_OK, InvalidInputError
from pacbound.parallel import collectively, current
from pacbound.report.validate import load_report
from pacbound.verify.fields import FieldCheck, Verification

EXAMPLES = """\b
Examples:
  pacbound certify final.safetensors --arch mlp --init init.safetensors \\
      --data examples/data/mnist --output report.json --save-posterior posterior.safetensors
  pacbound verify report.json
  pacbound verify report.json --root /path/where/certify/ran --json
  # A compressed artifact, decoded and re-scored on its training data:
  pacbound certify final.safetensors --method quantize --arch mlp \\
      --data examples/data/mnist --artifact model.pbcm --output report.json
  pacbound verify model.pbcm --arch mlp --data examples/data/mnist --report report.json
"""

HELP = """Re-derive the certificate in REPORT, or of a compressed ARTIFACT, and compare.

REPORT (a JSON report): checks that every input file still has the sha256 the report
recorded (a changed or missing file exits 3, naming it), then runs the method's own certify
phase again on the saved hypothesis: the Gaussian posterior file (with the prior mean
re-derived: init weights, zero, or a data-dependent prior retrained on S_prior with the
recorded recipe and seed; σ_p re-chosen over the grid; the Monte-Carlo draws replayed with
the same seeds), the compressed artifact (decoded, its errors recounted), or the marginal
method's kernel file (the kernel, EP and the importance-sampling lower bound on P(U)
recomputed from the recorded seeds). Every field of
the results is compared with the report's and printed with both values. Exit 0 when every
field agrees exactly, 1 when any disagrees; a report of an older schema exits 3.

ARTIFACT (a file written by `compress` or `certify --artifact`, recognised by its magic
bytes): decodes it against --arch/--arch-kwargs (and --init for a subspace artifact made
with one; otherwise θ₀ and the seed come from the artifact),
counts the decoded model's errors on --data and recomputes its code length and Occam bound.
A truncated or corrupted artifact, or one made for another architecture, exits 3. With
--report, the artifact's sha256, the data and every certificate field are compared with the
report (exit 1 on any disagreement); --delta and --batch-size then default to the report's.
"""

#: Options that describe how to re-derive an artifact; a report records them itself.
ARTIFACT_ONLY = (
    "arch",
    "arch_kwargs",
    "init",
    "data",
    "split",
    *DATA_KWARGS,
    "delta",
    "batch_size",
    "against",
)
DEFAULT_DELTA = 0.05
DEFAULT_BATCH_SIZE = 1024


def _optional_data_options(func: Any) -> Any:
    """The shared data options, with --data optional: REPORT mode reads the recorded data."""
    func = data_options(func)
    for param in func.__click_params__:
        if param.name == "data":
            param.required = False
    return func


@click.command("verify", help=HELP, epilog=EXAMPLES)
@click.argument("target", metavar="REPORT|ARTIFACT", type=click.Path(path_type=Path))
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="REPORT: folder that relative input paths in the report are relative to (where "
    "certify ran).",
)
@click.option(
    "--arch",
    metavar="NAME|PKG.MOD:FACTORY",
    help="ARTIFACT: the architecture the artifact was made for.",
)
@click.option(
    "--arch-kwargs",
    type=JSON_OBJECT,
    default=None,
    metavar="JSON",
    help="ARTIFACT: keyword arguments of the architecture factory, a JSON object.",
)
@click.option(
    "--init",
    metavar="PATH",
    default=None,
    help="ARTIFACT: the init file a subspace artifact's θ₀ was taken from (certify/compress "
    "--init).",
)
@_optional_data_options
@click.option(
    "--report",
    "against",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="ARTIFACT: a report of the artifact to compare with, field by field.",
)
@click.option(
    "--delta",
    type=FLOAT,
    default=None,
    help=f"ARTIFACT: δ of the bound. [default: the report's, else {DEFAULT_DELTA}]",
)
@click.option(
    "--batch-size",
    type=INT,
    default=None,
    help=f"ARTIFACT: evaluation batch size. [default: the report's, else {DEFAULT_BATCH_SIZE}]",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--unsafe-allow-pickle",
    is_flag=True,
    help="DANGEROUS: let the checkpoint or init file be fully unpickled (can run arbitrary "
    "code); only for files you trust that certify also needed this flag for.",
)
@json_option
@verify_threads_option
def verify(**kw: Any) -> None:
    ctx = click.get_current_context()
    world = join_world(kw)  # under torchrun: this rank's device, the process group
    if kw["unsafe_allow_pickle"]:
        Terminal(mute=not world.is_writer).warn(
            "--unsafe-allow-pickle: checkpoint and init files may be fully unpickled, which "
            "can run arbitrary code; use it only for files you trust"
        )
    target: Path = kw["target"]
    if _is_artifact(target, expected=_given(ctx, ARTIFACT_ONLY) is not None):
        if (name := _given(ctx, ("root",))) is not None:
            raise click.UsageError(
                f"{name} applies to a REPORT only; {target} is an artifact.", ctx=ctx
            )
        code = _verify_artifact(ctx, kw)
    else:
        if (name := _given(ctx, ARTIFACT_ONLY)) is not None:
            raise click.UsageError(
                f"{name} applies to an ARTIFACT only; a report records its own architecture, "
                "data and δ.",
                ctx=ctx,
            )
        code = _verify_report(target, kw)
    ctx.exit(code)


def _given(ctx: click.Context, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` given on the command line, as its flag, or ``None``."""
    for name in names:
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            return "--report" if name == "against" else "--" + name.replace("_", "-")
    return None


def _is_artifact(path: Path, *, expected: bool) -> bool:
    """Whether ``path`` starts with the artifact magic; a file that is neither is refused
    when artifact options were given (otherwise the report loader names the problem)."""
    from pacbound.compressors.message import MAGIC

    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        if expected:
            raise InvalidInputError(f"cannot read {path} ({exc.strerror})") from None
        return False
    if head.startswith(MAGIC):
        return True
    if expected and not head.lstrip().startswith(b"{"):
        raise InvalidInputError(
            f"{path} is neither a pacbound report (JSON) nor a compressed artifact (it does not "
            f"start with the magic bytes {MAGIC.decode()}); the file is corrupted or of "
            "another kind"
        )
    return False


def _verify_report(report: Path, kw: dict[str, Any]) -> int:
    document = collectively(lambda: load_report(report, upgrade=False))
    set_report_threads(kw["threads"], document)
    agree_on_report(document, report, kw["root"])
    from pacbound.io import resolve_device
    from pacbound.verify.engine import verify_report

    outcome = verify_report(
        document,
        root=kw["root"],
        device=resolve_device(kw["device"]),
        unsafe_allow_pickle=kw["unsafe_allow_pickle"],
    )
    outcome, gate = _with_gate(document, outcome)
    if kw["as_json"] and current().is_writer:
        emit_json({"report": str(report), **outcome.to_dict(), "gate": gate.to_dict()})
    elif not kw["as_json"]:
        _render(Terminal(mute=not current().is_writer), outcome.checks)
    return _exit_code(outcome, gate)


def _with_gate(document: dict[str, Any], outcome: Verification) -> tuple[Verification, GateOutcome]:
    """The report's gate recomputed from the re-derived bound and verdict (not the reported
    ones), with its checks and those of the options against the recorded command line added
    to the verification."""
    gate, checks = recheck_gate(
        document["gate"],
        document["argv"],
        outcome.recomputed("bound"),
        outcome.recomputed("verdict.chance_error"),
    )
    return outcome.extended([*checks, *argv_checks(document)]), gate


def _exit_code(outcome: Verification, gate: GateOutcome) -> int:
    """1 when any field disagrees; otherwise the recomputed gate's exit code (as certify's),
    never the report's say-so."""
    _explain(outcome)
    if not outcome.agree:
        return EXIT_GATE_FAILED
    for reason in gate.reasons:
        _say(f"Gate failed: {reason}")
    return int(gate.exit_code)


def _say(line: str) -> None:
    """A line on stderr, from rank 0 only in a distributed run."""
    if current().is_writer:
        click.echo(line, err=True)


def _verify_artifact(ctx: click.Context, kw: dict[str, Any]) -> int:
    for name, why in (("data", "the training data to count errors on"), ("arch", "its model")):
        if kw[name] is None:
            raise click.UsageError(
                f"verify ARTIFACT needs --{name} ({why}); give --arch, --arch-kwargs and the "
                "data options the artifact was made with.",
                ctx=ctx,
            )
    import hashlib

    from pacbound.certify.factories import architecture_factory
    from pacbound.certify.occam_method import verify_artifact
    from pacbound.compressors import CompressedMessage
    from pacbound.io import check_model_data, resolve_device
    from pacbound.verify.engine import artifact_report_method, verify_artifact_report

    payload = kw["target"].read_bytes()
    message = CompressedMessage.from_bytes(payload)  # truncated or corrupted: exit 3 here
    report = load_report(kw["against"], upgrade=False) if kw["against"] is not None else None
    method = None if report is None else artifact_report_method(report)
    factory = architecture_factory(
        kw["arch"],
        kw["arch_kwargs"],
        init=kw["init"],
        unsafe_allow_pickle=kw["unsafe_allow_pickle"],
    )
    data = collectively(lambda: resolve_dataset(kw["data"], split=kw["split"], **data_kwargs(kw)))
    agree_on_inputs(
        {"data": data.provenance.to_dict()},
        {"ARTIFACT": kw["target"], "--init": kw["init"], "--report": kw["against"]},
    )
    check_world_size({"--data": data.n})
    check_model_data(factory(message.seed or 0), data)
    cert = verify_artifact(
        payload,
        factory,
        data.x,  # a tensor, or LazyFeatures read per batch
        data.y,
        num_classes=data.num_classes,
        options=_artifact_options(kw, method, report),
        device=resolve_device(kw["device"]),
    )
    sha256 = hashlib.sha256(payload).hexdigest()
    record = {"path": str(kw["target"]), "sha256": sha256, "bytes": len(payload)}
    outcome: Verification | None = None
    gate: GateOutcome | None = None
    if report is not None:
        outcome, gate = _with_gate(
            report,
            verify_artifact_report(
                report,
                cert,
                artifact_sha256=sha256,
                data=data.provenance.to_dict(),
                theta0_sha256=getattr(factory, "init_sha256", None),
            ),
        )
    if kw["as_json"] and current().is_writer:
        checked = {}
        if outcome is not None and gate is not None:
            checked = {**outcome.to_dict(), "gate": gate.to_dict()}
        report_path = None if kw["against"] is None else str(kw["against"])
        emit_json({"artifact": record, "report": report_path, **checked, "results": cert.results})
    elif not kw["as_json"]:
        term = Terminal(mute=not current().is_writer)
        render_certificate(term, METHODS[cert.method], cert.results)
        if outcome is not None:
            _render(term, outcome.checks)
    return EXIT_OK if outcome is None or gate is None else _exit_code(outcome, gate)


def _artifact_options(kw: dict[str, Any], method: Method | None, report: Any) -> Any:
    """The options an artifact is re-derived with: the report's, else the defaults; --delta
    and --batch-size given on the command line replace theirs."""
    from dataclasses import replace

    from pacbound.certify.occam_options import CompressionOptions

    if method is None:
        options = CompressionOptions(delta=DEFAULT_DELTA, batch_size=DEFAULT_BATCH_SIZE)
    else:
        options = method.options_from_report(report["options"])
    return replace(
        options,
        delta=_first(kw["delta"], options.delta),
        batch_size=_first(kw["batch_size"], options.batch_size),
    )


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


#: Disagreeing fields named in the one-line summary (the table and --json list them all).
NAMED_FIELDS = 8


def _explain(outcome: Verification) -> None:
    if not outcome.agree:
        names = outcome.disagreeing
        more = f" and {len(names) - NAMED_FIELDS} more" if len(names) > NAMED_FIELDS else ""
        _say(
            f"Verification failed: {len(names)} field(s) disagree: "
            + ", ".join(names[:NAMED_FIELDS])
            + more
        )


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{…}" if len(str(value)) > 40 else str(value)
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"  # long sentences: see --json


def _render(term: Terminal, checks: tuple[FieldCheck, ...]) -> None:
    table = Table(title="pacbound verify", title_justify="left")
    for column in ("field", "report", "recomputed", "agree"):
        table.add_column(column)
    for check in checks:
        table.add_row(
            check.field,
            _show(check.reported),
            _show(check.recomputed),
            "yes" if check.agree else "[red]NO[/red]",
        )
    term.table(table)

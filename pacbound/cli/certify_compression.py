"""The compression side of ``pacbound certify`` (``--method subspace|quantize``).

Shared with ``pacbound compress``: the options, the run, and the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from pacbound.bounds import format_up
from pacbound.cli.options import FLOAT, INT
from pacbound.cli.terminal import Terminal, certificate_table
from pacbound.errors import InvalidInputError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RunOutcome:
    """What a method's run hands back to the command for reporting."""

    results: dict[str, Any]
    options: dict[str, Any]
    inputs: dict[str, Any]
    timings: dict[str, float]
    files: list[tuple[Path, bytes, str]] = field(default_factory=list)
    render: Callable[[Terminal, dict[str, Any]], None] = lambda term, res: None
    warnings: list[str] = field(default_factory=list)


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        values = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise InvalidInputError(
            f"--{param.name} must be an integer or a comma-separated list (e.g. 500,1000), "
            f"got {value!r}",
            param=f"--{param.name}",
        ) from None
    return values[0] if len(values) == 1 else values


def compression_tuning_options(func: F) -> F:
    """Options of the compression methods (``--d``, ``--levels``, …, ``--qat-steps``)."""
    decorators = [
        click.option(
            "--d",
            callback=_int_list,
            default=None,
            metavar="D[,D…]",
            help="subspace: dimension(s) d; a list is a predeclared search whose "
            "choice is paid in the code length. [default: 1000]",
        ),
        click.option(
            "--levels",
            callback=_int_list,
            default=None,
            metavar="L[,L…]",
            help="subspace/quantize: quantization level(s) L ≥ 2. [default: 8]",
        ),
        click.option(
            "--projector",
            type=click.Choice(["kronecker", "dense", "sparse"]),
            default="kronecker",
            show_default=True,
            help="subspace: random projector.",
        ),
        click.option(
            "--codebook",
            type=click.Choice(["kmeans", "uniform"]),
            default="kmeans",
            show_default=True,
            help="Quantization codebook.",
        ),
        click.option(
            "--precision",
            type=click.Choice(["float16", "float32", "float64"]),
            default="float32",
            show_default=True,
            help="Stored precision of the codebook (counted in the code length).",
        ),
        click.option(
            "--zero-level",
            is_flag=True,
            help="quantize: add an exact 0 level so pruned weights stay zero.",
        ),
        click.option(
            "--subspace-epochs",
            type=INT,
            default=20,
            show_default=True,
            help="subspace: training epochs of w.",
        ),
        click.option(
            "--subspace-lr",
            type=FLOAT,
            default=1e-2,
            show_default=True,
            help="subspace: learning rate of w.",
        ),
        click.option(
            "--subspace-batch-size",
            type=INT,
            default=128,
            show_default=True,
            help="subspace: mini-batch size.",
        ),
        click.option(
            "--subspace-optimizer",
            type=click.Choice(["adam", "sgd"]),
            default="adam",
            show_default=True,
            help="subspace: optimizer.",
        ),
        click.option(
            "--subspace-lr-schedule",
            type=click.Choice(["constant", "cosine"]),
            default="constant",
            show_default=True,
            help="subspace: learning-rate schedule (cosine decays to 0 over all steps).",
        ),
        click.option(
            "--subspace-init",
            type=click.Choice(["zero", "checkpoint"]),
            default="zero",
            show_default=True,
            help="subspace: start w at 0, or at the least-squares projection of the "
            "checkpoint's θ − θ₀.",
        ),
        click.option(
            "--qat-steps",
            type=INT,
            default=0,
            show_default=True,
            help="Quantization-aware fine-tuning steps (straight-through).",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def compression_options(func: F) -> F:
    """:func:`compression_tuning_options` plus ``--artifact`` (``certify``'s optional output)."""
    func = click.option(
        "--artifact",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Save the compressed model (the certified artifact).",
    )(func)
    return compression_tuning_options(func)


def compression_options_from(kw: dict[str, Any]) -> Any:
    from pacbound.certify.compression import CompressionOptions, SubspaceRecipe

    return CompressionOptions(
        method=kw["method"],
        d=kw["d"] if kw["d"] is not None else 1000,
        levels=kw["levels"] if kw["levels"] is not None else 8,
        projector=kw["projector"],
        codebook=kw["codebook"],
        precision=kw["precision"],
        zero_level=kw["zero_level"],
        seed=kw["seed"],
        training=SubspaceRecipe(
            epochs=kw["subspace_epochs"],
            lr=kw["subspace_lr"],
            batch_size=kw["subspace_batch_size"],
            optimizer=kw["subspace_optimizer"],
            lr_schedule=kw["subspace_lr_schedule"],
        ),
        qat_steps=kw["qat_steps"],
        delta=kw["delta"],
        batch_size=kw["batch_size"],
        check_deterministic=not kw["allow_nondeterministic"],
    )


def model_factory(kw: dict[str, Any], loaded: Any = None) -> Any:
    """``seed ↦ fresh model`` from the ``loaded`` model's architecture (--arch/--arch-kwargs,
    or the .pt2 program or pickled model itself) and --init for subspace: the decoder rebuilds
    θ₀ from it (:func:`pacbound.certify.factories.factory_for`)."""
    if kw["method"] == "quantize" and kw.get("init") is not None:
        raise InvalidInputError(
            "--init applies to --method gaussian (prior mean) and subspace (θ₀) only; "
            "--method quantize codes the checkpoint's own weights: drop it",
            param="--init",
        )
    if loaded is not None:
        from pacbound.certify.factories import factory_for

        return factory_for(
            loaded,
            kw["method"],
            init=kw.get("init"),
            unsafe_allow_pickle=kw.get("unsafe_allow_pickle", False),
        )
    if kw["arch"] is None:
        raise InvalidInputError(
            f"--method {kw['method']} needs --arch: the decoder rebuilds the architecture "
            "(and θ₀) from it",
            param="--arch",
        )
    return factory_from_arch(
        kw["arch"],
        kw["arch_kwargs"],
        init=kw.get("init"),
        unsafe_allow_pickle=kw.get("unsafe_allow_pickle", False),
    )


def factory_from_arch(
    arch: str,
    arch_kwargs: dict[str, Any] | None,
    *,
    init: str | None = None,
    unsafe_allow_pickle: bool = False,
) -> Any:
    """The factory that encoder and decoder share (θ₀ from the seed, or from --init)."""
    from pacbound.certify.compression import architecture_factory

    return architecture_factory(
        arch, arch_kwargs, init=init, unsafe_allow_pickle=unsafe_allow_pickle
    )


def run_compression(
    kw: dict[str, Any],
    loaded: Any,
    data: Any,
    device: Any,
    progress: Callable[[str, int], Callable[[int], None]],
    *,
    heldout: Any = None,
    unlabeled: Any = None,
) -> RunOutcome:
    """Certify the decoded model, then compare it with the checkpoint: training errors and
    disagreements, the held-out bound (``heldout``, a labeled data set) and the certificate
    for the checkpoint itself from held-out or ``unlabeled`` inputs (MATH.md §11)."""
    from pacbound.certify.compressed_checkpoint import statement_deltas

    options = compression_options_from(kw)
    delta_h, delta_d = statement_deltas(
        options.delta, kw.get("heldout_delta"), kw.get("disagreement_delta")
    )
    factory = model_factory(kw, loaded)
    near: str | None = None
    if kw.get("init") is not None:
        from pacbound.io.models import refuse_trained_init

        refuse_trained_init(factory.state, loaded)
        from pacbound.io.models import near_trained_init

        near = near_trained_init(factory.state, loaded)
    from pacbound.compressors.base import check_uncoded_buffers

    # Every uncoded tensor of the checkpoint must be the one the decoder rebuilds.
    check_uncoded_buffers(loaded.module, factory(options.seed))
    cert = _certify_decoded(kw, options, factory, loaded, data, device, progress)
    statements = _checkpoint_statements(
        cert, kw, loaded, data, factory, device, heldout, unlabeled, (delta_h, delta_d)
    )
    payload = cert.message.to_bytes()
    inputs: dict[str, Any] = {}
    if kw.get("init") is not None:
        from pacbound.io import sha256_file

        inputs["init"] = {
            "path": str(kw["init"]),
            "sha256": sha256_file(kw["init"]),
            "theta0_sha256": factory.init_sha256,
        }
    files: list[tuple[Path, bytes, str]] = []
    if kw.get("artifact") is not None:
        inputs["artifact"] = {
            "path": str(kw["artifact"]),
            "sha256": cert.artifact_sha256,
            "bytes": len(payload),
            "note": "written by this run",
        }
        files.append((kw["artifact"], payload, "--artifact"))
    return RunOutcome(
        results={**cert.to_dict(), **statements.to_dict()},
        options={
            **options.to_dict(),
            "delta": options.delta,
            "heldout_delta": delta_h,
            "disagreement_delta": delta_d,
        },
        inputs=inputs,
        timings=dict(cert.timings),
        files=files,
        render=render_compression,
        warnings=[] if near is None else [near],
    )


def _certify_decoded(
    kw: dict[str, Any],
    options: Any,
    factory: Any,
    loaded: Any,
    data: Any,
    device: Any,
    progress: Callable[[str, int], Callable[[int], None]],
) -> Any:
    """The Occam certificate of the decoded model (subspace training or post-hoc quantize)."""
    from pacbound.certify.compression import certify_quantized, certify_subspace

    if kw["method"] == "subspace":
        checkpoint = loaded.module if kw["subspace_init"] == "checkpoint" else None
        return certify_subspace(
            factory,
            data.x,
            data.y,
            num_classes=data.num_classes,
            options=options,
            checkpoint_model=checkpoint,
            device=device,
            progress=progress,
        )
    return certify_quantized(
        loaded.module,
        factory,
        data.x,
        data.y,
        num_classes=data.num_classes,
        options=options,
        device=device,
        progress=progress,
    )


def check_same_input_shape(other: Any, data: Any, option: str) -> None:
    """Refuse inputs whose per-example shape is not the training data's (before any work)."""
    mine, theirs = tuple(other.x.shape[1:]), tuple(data.x.shape[1:])
    if mine != theirs:
        raise InvalidInputError(
            f"{option} {other.provenance.path}: each input has shape {list(mine)}, but the "
            f"--data inputs have {list(theirs)}; give inputs in the same format as --data",
            param=option,
        )


def _checkpoint_statements(
    cert: Any,
    kw: dict[str, Any],
    loaded: Any,
    data: Any,
    factory: Any,
    device: Any,
    heldout: Any,
    unlabeled: Any,
    deltas: tuple[float, float],
) -> Any:
    from pacbound.certify.compressed_checkpoint import compare_with_checkpoint

    return compare_with_checkpoint(
        cert,
        loaded.module,
        factory,
        data.x,
        data.y,
        heldout=None if heldout is None else (heldout.x, heldout.y),
        unlabeled=None if unlabeled is None else unlabeled.x,
        heldout_delta=deltas[0],
        disagreement_delta=deltas[1],
        batch_size=kw["batch_size"],
        check_determinism=not kw["allow_nondeterministic"],
        device=device,
    )


def render_compression(term: Terminal, res: dict[str, Any]) -> None:
    comp = res["compression"]
    table = certificate_table(
        f"pacbound certificate (Occam bound, {res['method']} compression)", res
    )
    table.add_row("n (training examples)", str(res["n"]))
    table.add_row("errors of the decoded model", f"{res['errors']} ({res['empirical_risk']:.6f})")
    table.add_row("code length", f"{res['code_length_bits']} bits")
    for part, bits in res["code_length_breakdown"].items():
        table.add_row(f"  {part}", f"{bits} bits")
    dim = f"d = {comp['dimension']}, " if comp["dimension"] is not None else ""
    table.add_row("compression", f"{comp['kind']}: {dim}L = {comp['levels']}, seed {comp['seed']}")
    for part in res["delta_budget"]["parts"]:
        table.add_row(f"δ: {part['name']}", f"{part['delta']:.6g}")
    _checkpoint_rows(table, res)
    term.table(table)


def _checkpoint_rows(table: Any, res: dict[str, Any]) -> None:
    """The checkpoint's side: training comparison, held-out bound, certificate (rounded up)."""
    train = res.get("checkpoint_on_training")
    if train is not None:
        table.add_row(
            "errors of the checkpoint",
            f"{train['errors']} ({train['empirical_risk']:.6f}, training data)",
        )
        table.add_row(
            "decoded ≠ checkpoint",
            f"{train['disagreements_with_decoded']} of {train['n']} predictions "
            f"({train['disagreement_rate']:.6f}, training data)",
        )
    h = res.get("heldout")
    if h is not None:
        table.add_row(
            "held-out bound (checkpoint)",
            f"{format_up(h['bound'], 4)}  ({h['errors']}/{h['n']} errors, δ = {h['delta']:g}, "
            "separate statement)",
        )
    c = res.get("checkpoint")
    if c is not None:
        d = c["disagreement"]
        table.add_row(
            "bound on the checkpoint itself",
            f"{format_up(c['bound'], 4)}  (decoded {format_up(c['bound_on_certified'], 4)} + "
            f"disagreement {format_up(d['upper_bound'], 4)} from {d['disagreements']}/"
            f"{d['inputs']} {d['source']} inputs; δ = {c['delta_total']:.6g} in all)",
        )

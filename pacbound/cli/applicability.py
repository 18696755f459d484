"""Which options apply to which runs: one table, checked before anything is loaded.

An option given on the command line that the chosen method, prior, posterior or data format
does not use would be silently ignored; pacbound refuses it instead (a usage error, exit 2),
naming the option and saying what it needs. Defaults never count: only options the user
typed (click's ``ParameterSource.COMMANDLINE``).

:data:`RULES` maps an option's parameter name to the :class:`Condition` under which it
applies; options of a command that are not in the table always apply. Format options of the
data inputs other than ``--split`` (``--x-key``, ``--csv-delimiter``, …) are checked by
:mod:`pacbound.cli.model_options`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from click.core import ParameterSource

from pacbound.errors import UsageError
from pacbound.io import data_format

COMPRESSION_METHODS = ("subspace", "quantize")


@dataclass(frozen=True)
class Run:
    """What decides applicability, read from a command's parsed parameters."""

    method: str
    prior: str | None
    posterior: str | None
    data: str | None
    heldout: str | None
    unlabeled: str | None
    gated: bool

    @classmethod
    def of(cls, params: dict[str, Any]) -> Run:
        return cls(
            method=params.get("method") or "gaussian",
            prior=params.get("prior"),
            posterior=params.get("posterior"),
            data=_kind(params.get("data")),
            heldout=_kind(params.get("heldout")),
            unlabeled=_kind(params.get("unlabeled")),
            gated=params.get("max_bound") is not None or bool(params.get("fail_if_vacuous")),
        )


def _kind(path: object) -> str | None:
    """The format the loader would read ``path`` as (``"idx"``, ``"npy"`` for a streamed
    folder, ``"npz"``, ``"csv"``, ``"safetensors"``), ``"absent"`` for an option not given, or
    ``None`` when the format cannot be told (the loader then reports the path)."""
    if path is None:
        return "absent"
    fmt = data_format(str(path))
    return None if fmt is None else fmt.value


_KIND_TEXT = {
    "idx": "an MNIST IDX folder",
    "npy": "a folder with x.npy and y.npy",
    "absent": "none",
}


def _kind_text(kind: str | None) -> str:
    return _KIND_TEXT.get(kind or "", f"a .{kind} file")


@dataclass(frozen=True)
class Condition:
    """When an option applies: ``holds(run)``; ``needs`` says it in words and
    ``has(run)`` describes what the run has instead."""

    needs: str
    holds: Callable[[Run], bool]
    has: Callable[[Run], str]


def _method(run: Run) -> str:
    return f"--method {run.method}"


GAUSSIAN = Condition("--method gaussian", lambda r: r.method == "gaussian", _method)
COMPRESSION = Condition(
    "--method subspace or quantize", lambda r: r.method in COMPRESSION_METHODS, _method
)
SUBSPACE = Condition("--method subspace", lambda r: r.method == "subspace", _method)
QUANTIZE = Condition("--method quantize", lambda r: r.method == "quantize", _method)
PRIOR_DATA = Condition(
    "--prior data (--method gaussian)",
    lambda r: r.method == "gaussian" and r.prior == "data",
    lambda r: _method(r) if r.method != "gaussian" else f"--prior {r.prior}",
)
DIAGONAL = Condition(
    "--posterior diagonal (--method gaussian)",
    lambda r: r.method == "gaussian" and r.posterior == "diagonal",
    lambda r: _method(r) if r.method != "gaussian" else f"--posterior {r.posterior}",
)
INIT = Condition(
    "--method gaussian with --prior init or data, or --method subspace",
    lambda r: r.method == "subspace" or (r.method == "gaussian" and r.prior != "zero"),
    lambda r: _method(r) if r.method != "gaussian" else f"--prior {r.prior}",
)
IDX_DATA = Condition(
    "an MNIST IDX folder as --data",
    lambda r: r.data in ("idx", None),
    lambda r: f"{_kind_text(r.data)} as --data",
)
HELDOUT = Condition("--heldout", lambda r: r.heldout != "absent", lambda r: "no --heldout")
IDX_HELDOUT = Condition(
    "an MNIST IDX folder as --heldout",
    lambda r: r.heldout in ("idx", None),
    lambda r: f"{_kind_text(r.heldout)} as --heldout",
)
IDX_UNLABELED = Condition(
    "an MNIST IDX folder as --unlabeled",
    lambda r: r.unlabeled in ("idx", None),
    lambda r: f"{_kind_text(r.unlabeled)} as --unlabeled",
)
GATE = Condition(
    "a gate (--max-bound or --fail-if-vacuous)", lambda r: r.gated, lambda r: "no gate"
)
CHECKPOINT_INPUTS = Condition(
    "--heldout or --unlabeled",
    lambda r: r.heldout != "absent" or r.unlabeled != "absent",
    lambda r: "neither",
)

#: Option (parameter name) → when it applies. The one place that says so.
RULES: dict[str, Condition] = {
    **dict.fromkeys(
        (
            "prior",
            "prior_scales",
            "posterior",
            "mc_passes",
            "mc_delta",
            "save_posterior",
            "sampler",
        ),
        GAUSSIAN,
    ),
    **dict.fromkeys(
        (
            "prior_fraction",
            "prior_epochs",
            "prior_lr",
            "prior_lr_schedule",
            "prior_augment_shift",
        ),
        PRIOR_DATA,
    ),
    **dict.fromkeys(
        (
            "posterior_epochs",
            "posterior_optimizer",
            "posterior_lr",
            "keep_best",
            "sigma_lr",
            "objective",
            "p_min",
        ),
        DIAGONAL,
    ),
    **dict.fromkeys(("levels", "codebook", "precision", "qat_steps", "artifact"), COMPRESSION),
    **dict.fromkeys(
        (
            "d",
            "projector",
            "subspace_epochs",
            "subspace_lr",
            "subspace_batch_size",
            "subspace_optimizer",
            "subspace_lr_schedule",
            "subspace_init",
        ),
        SUBSPACE,
    ),
    "zero_level": QUANTIZE,
    "init": INIT,
    "split": IDX_DATA,
    "heldout_split": IDX_HELDOUT,
    "unlabeled_split": IDX_UNLABELED,
    "heldout_delta": HELDOUT,
    "disagreement_delta": CHECKPOINT_INPUTS,
    "exit_zero": GATE,
}


def _flag(param: click.Parameter, value: object) -> str:
    """The option as the user typed it (``--keep-last`` for the off side of a switch)."""
    if isinstance(param, click.Option) and param.secondary_opts and value is False:
        return param.secondary_opts[0]
    long = [o for o in param.opts if o.startswith("--")]
    return (long or param.opts)[0]


def reject_inapplicable(ctx: click.Context, rules: dict[str, Condition] | None = None) -> None:
    """Refuse (exit 2) the first option typed on the command line that does not apply."""
    table = RULES if rules is None else rules
    run = Run.of(ctx.params)
    for param in ctx.command.params:
        name = param.name
        if name is None or name not in table or name not in ctx.params:
            continue
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        condition = table[name]
        if not condition.holds(run):
            flag = _flag(param, ctx.params[name])
            raise UsageError(
                f"{flag} applies only with {condition.needs}, and this run has "
                f"{condition.has(run)}: drop {flag}",
                param=flag,
            )

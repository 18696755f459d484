"""Which options apply to which runs, checked before anything is loaded.

An option given on the command line that the chosen method, prior, posterior or data format
does not use would be silently ignored; pacbound refuses it instead (a usage error, exit 2),
naming the option and saying what it needs. Defaults never count: only options the user
typed (click's ``ParameterSource.COMMANDLINE``).

Two sources say when an option applies, and both must hold:

* the method registry (:data:`pacbound.certify.registry.METHODS`): an option that some
  method lists in its ``parameters`` applies only with a method that lists it, under that
  method's further :class:`~pacbound.certify.method.OptionRule` if any
  (:func:`method_condition`);
* :data:`RULES`, the conditions that are not about a method (data formats, held-out sets,
  the gate).

Options of a command in neither apply always. Format options of the data inputs other than
``--split`` (``--x-key``, ``--csv-delimiter``, …) are checked by
:mod:`pacbound.cli.model_options`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import click
from click.core import ParameterSource

from pacbound.certify.method import OptionRule
from pacbound.certify.registry import METHODS, needs_checkpoint
from pacbound.errors import UsageError
from pacbound.io import data_format


@dataclass(frozen=True)
class Run:
    """What decides applicability, read from a command's parsed parameters."""

    method: str
    data: str | None
    heldout: str | None
    unlabeled: str | None
    gated: bool
    params: Mapping[str, Any]

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Run:
        return cls(
            method=params.get("method") or next(iter(METHODS)),
            data=_kind(params.get("data")),
            heldout=_kind(params.get("heldout")),
            unlabeled=_kind(params.get("unlabeled")),
            gated=params.get("max_bound") is not None or bool(params.get("fail_if_vacuous")),
            params=params,
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


def _checkpoint_methods() -> str:
    return " or ".join(name for name, m in METHODS.items() if needs_checkpoint(m))


#: Options of the statements about a checkpoint (the held-out bound, the disagreement
#: bound): methods that certify without a checkpoint (``marginal``) make none.
CERTIFIES_CHECKPOINT = Condition(
    f"--method {_checkpoint_methods()}",
    lambda r: r.method in METHODS and needs_checkpoint(METHODS[r.method]),
    lambda r: f"--method {r.method}",
)

#: Option (parameter name) → when it applies, for the conditions that are not about a method
#: (all of them must hold, in this order).
RULES: dict[str, tuple[Condition, ...]] = {
    "split": (IDX_DATA,),
    "heldout_split": (IDX_HELDOUT,),
    "unlabeled_split": (IDX_UNLABELED,),
    "heldout_delta": (CERTIFIES_CHECKPOINT, HELDOUT),
    "unlabeled": (CERTIFIES_CHECKPOINT,),
    "disagreement_delta": (CERTIFIES_CHECKPOINT, CHECKPOINT_INPUTS),
    "exit_zero": (GATE,),
}


def _users(option: str) -> dict[str, OptionRule | None]:
    """The registered methods that use ``option``, with their further rule."""
    return {name: m.parameters[option] for name, m in METHODS.items() if option in m.parameters}


def _needs(users: Mapping[str, OptionRule | None]) -> str:
    """What an option needs, in words: ``--method subspace or quantize``, ``--prior data
    (--method gaussian)``, ``--method gaussian with --prior init or data, or --method
    subspace``."""
    if len(users) == 1:
        ((only, rule),) = users.items()
        if rule is not None:
            return f"{rule.needs} (--method {only})"
    ruled = [f"--method {name} with {r.needs}" for name, r in users.items() if r is not None]
    plain = [name for name, r in users.items() if r is None]
    return ", or ".join([*ruled, *([f"--method {' or '.join(plain)}"] if plain else [])])


def method_condition(option: str) -> Condition | None:
    """When ``option`` applies as far as the methods say (``None``: no method lists it)."""
    users = _users(option)
    if not users:
        return None

    def holds(run: Run) -> bool:
        if run.method not in users:
            return False
        rule = users[run.method]
        return rule is None or rule.holds(run.params)

    def has(run: Run) -> str:
        rule = users.get(run.method)
        return f"--method {run.method}" if rule is None else rule.has(run.params)

    return Condition(_needs(users), holds, has)


def conditions(option: str) -> list[Condition]:
    """Every condition under which ``option`` applies (none: it always does)."""
    found = list(RULES.get(option, ()))
    derived = method_condition(option)
    return found if derived is None else [*found, derived]


def _flag(param: click.Parameter, value: object) -> str:
    """The option as the user typed it (``--keep-last`` for the off side of a switch)."""
    if isinstance(param, click.Option) and param.secondary_opts and value is False:
        return param.secondary_opts[0]
    long = [o for o in param.opts if o.startswith("--")]
    return (long or param.opts)[0]


def reject_inapplicable(ctx: click.Context) -> None:
    """Refuse (exit 2) the first option typed on the command line that does not apply."""
    run = Run.of(ctx.params)
    for param in ctx.command.params:
        name = param.name
        if name is None or name not in ctx.params:
            continue
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        for condition in conditions(name):
            if not condition.holds(run):
                flag = _flag(param, ctx.params[name])
                raise UsageError(
                    f"{flag} applies only with {condition.needs}, and this run has "
                    f"{condition.has(run)}: drop {flag}",
                    param=flag,
                )

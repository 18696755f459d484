"""``pacbound verify``: the recorded options and gate against the recorded command line.

``verify`` re-derives a certificate from the report's ``options`` (the δ budget, the σ_p
grid, the held-out δ) and its gate from ``gate``'s thresholds. A report written by the
``pacbound certify`` command line also records that line (``argv``); it is parsed here with
``certify``'s own option parser and defaults, the method turns it into its options
(``options(params)``) and their report block (``record_options``), and every recorded option
must be the one that block gives, so an edit of ``options`` (say, a σ_p grid shrunk to the
chosen value) or of ``gate`` (a threshold removed) is caught even when every number was
recomputed to match. Reports made through the library or another program (``argv[1]`` is
not ``certify``) have no such line and get no such checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pacbound.certify.registry import METHODS
from pacbound.errors import PacboundError
from pacbound.verify.fields import FieldCheck

#: Options every method records, compared whatever the method.
COMMON_KEYS = ("method", "delta", "seed")


def _method_checks(opts: Mapping[str, Any], params: Mapping[str, Any]) -> list[FieldCheck]:
    """The method's own recorded options against the block the command line gives (a key
    the report does not record, or a value resolved only once the inputs are loaded, is
    not compared)."""
    name = params.get("method")
    if opts.get("method") != name or name not in METHODS:
        return []  # already a disagreement on options.method
    method = METHODS[name]
    expected = method.record_options(method.options(params))
    return [
        FieldCheck(f"options.{key} (argv)", opts[key], value)
        for key, value in expected.items()
        if key not in COMMON_KEYS and key in opts and value is not None
    ]


def argv_checks(document: Mapping[str, Any]) -> list[FieldCheck]:
    """Field checks of ``options`` and ``gate`` against ``argv`` (none when the report was
    not written by the ``pacbound certify`` command line)."""
    argv = list(document["argv"][1:])
    while argv[:1] == ["--debug"]:  # the one option of `pacbound` itself that can come first
        argv = argv[1:]
    if argv[:1] != ["certify"]:
        return []
    from pacbound.cli.certify_cmd import certify

    params = certify.make_context("certify", argv[1:], resilient_parsing=True).params
    opts, gate = document["options"], document["gate"]
    checks = [
        FieldCheck(f"options.{key} (argv)", opts.get(key), params.get(key)) for key in COMMON_KEYS
    ]
    try:
        checks += _method_checks(opts, params)
    except PacboundError as exc:
        checks.append(FieldCheck("argv", "(recorded)", f"(not a valid command: {exc})"))
    checks.append(FieldCheck("gate.exit_zero (argv)", gate["exit_zero"], params.get("exit_zero")))
    for key in ("max_bound", "fail_if_vacuous"):
        if key in gate:
            checks.append(FieldCheck(f"gate.{key} (argv)", gate[key], params.get(key)))
    return checks

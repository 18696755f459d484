"""``pacbound verify``: the recorded options and gate against the recorded command line.

``verify`` re-derives a certificate from the report's ``options`` (the δ budget, the σ_p
grid, the held-out δ) and its gate from ``gate``'s thresholds. A report written by the
``pacbound certify`` command line also records that line (``argv``); it is parsed here with
``certify``'s own option parser and defaults, and the options and thresholds it gives must be
the recorded ones, so an edit of ``options`` (say, a σ_p grid shrunk to the chosen value) or
of ``gate`` (a threshold removed) is caught even when every number was recomputed to match.
Reports made through the library or another program (``argv[1]`` is not ``certify``) have no
such line and get no such checks.
"""

from __future__ import annotations

from typing import Any

from pacbound.errors import InvalidInputError
from pacbound.verify.fields import FieldCheck

#: Gaussian options the command line determines, compared as ``certify`` records them.
GAUSSIAN_KEYS = (
    "prior",
    "prior_fraction",
    "mc_passes",
    "mc_delta",
    "heldout_delta",
    "disagreement_delta",
)
#: The δs of a compression run's statements about the checkpoint.
STATEMENT_KEYS = ("heldout_delta", "disagreement_delta")


def _gaussian_options(params: dict[str, Any]) -> dict[str, Any]:
    """``GaussianOptions.to_dict()`` for the parsed command line (certify's own defaults)."""
    from pacbound.certify.gaussian_options import GaussianOptions
    from pacbound.posterior.priors import PriorMean, ScaleGrid

    return GaussianOptions(
        prior=PriorMean(params["prior"]),
        prior_scales=ScaleGrid.parse(params["prior_scales"]),
        prior_fraction=params["prior_fraction"],
        mc_passes=params["mc_passes"],
        delta=params["delta"],
        mc_delta=params["mc_delta"],
        heldout_delta=params["heldout_delta"],
        disagreement_delta=params.get("disagreement_delta"),
        seed=params["seed"],
    ).to_dict()


def _statement_deltas(params: dict[str, Any]) -> dict[str, float]:
    """A compression run's δ_H and δ_D for the parsed command line (certify's defaults)."""
    from pacbound.certify.occam_options import statement_deltas

    held, disagreement = statement_deltas(
        params["delta"], params.get("heldout_delta"), params.get("disagreement_delta")
    )
    return {"heldout_delta": held, "disagreement_delta": disagreement}


def _method_checks(opts: dict[str, Any], params: dict[str, Any]) -> list[FieldCheck]:
    """The method's own recorded options against those the command line gives (a key the
    report does not record is not compared; the σ_p grid always is)."""
    if opts.get("method") != params.get("method"):
        return []  # already a disagreement on options.method
    if opts["method"] == "gaussian":
        expected = _gaussian_options(params)
        recorded = opts.get("prior_scales")
        checks = [
            FieldCheck(
                "options.prior_scales (argv)",
                grid_identity(recorded) if isinstance(recorded, dict) else recorded,
                grid_identity(expected["prior_scales"]),
            )
        ]
        keys: tuple[str, ...] = GAUSSIAN_KEYS
    else:
        expected, checks, keys = _statement_deltas(params), [], STATEMENT_KEYS
    return checks + [
        FieldCheck(f"options.{key} (argv)", opts[key], expected[key]) for key in keys if key in opts
    ]


def argv_checks(document: dict[str, Any]) -> list[FieldCheck]:
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
        FieldCheck(f"options.{key} (argv)", opts.get(key), params.get(key))
        for key in ("method", "delta", "seed")
    ]
    try:
        checks += _method_checks(opts, params)
    except InvalidInputError as exc:
        checks.append(FieldCheck("argv", "(recorded)", f"(not a valid command: {exc})"))
    checks.append(FieldCheck("gate.exit_zero (argv)", gate["exit_zero"], params.get("exit_zero")))
    for key in ("max_bound", "fail_if_vacuous"):
        if key in gate:
            checks.append(FieldCheck(f"gate.{key} (argv)", gate[key], params.get(key)))
    return checks

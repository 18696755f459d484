"""A Markdown summary of a report for GitHub Actions' job summary (``GITHUB_STEP_SUMMARY``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pacbound.bounds import format_up
from pacbound.certify.registry import METHODS
from pacbound.errors import InvalidInputError

ENV_VAR = "GITHUB_STEP_SUMMARY"


def summary_markdown(report: Mapping[str, Any], digits: int = 4) -> str:
    """Gate outcome, the bound (rounded up) and what it certifies, as a Markdown section."""
    res, gate = report["results"], report["gate"]
    facts = METHODS[res["method"]].facts(res)
    verdict = res["verdict"]
    if gate["passed"]:
        status = "✅ gate passed"
    elif gate["exit_zero"]:
        status = "⚠️ gate failed (report only: --exit-zero)"
    else:
        status = "❌ gate failed"
    lines = [
        f"### pacbound certificate: {status}",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| bound on the true 0-1 error (rounded up) | **{format_up(res['bound'], digits)}** |",
        f"| certified classifier | {facts.classifier} |",
        f"| method / inequality | {res['method']} / {res['inequality']} |",
        f"| verdict | {'non-vacuous' if verdict['non_vacuous'] else 'VACUOUS'} "
        f"(chance error {verdict['chance_error']:.4g}) |",
        f"| n | {res['n']} |",
    ]
    if facts.kl_nats is not None:
        lines.append(f"| KL(Q‖P) | {format_up(facts.kl_nats, 2)} nats |")
    if facts.code_length_bits is not None:
        lines.append(f"| code length | {facts.code_length_bits} bits |")
    upper = facts.empirical_risk_upper
    lines += [
        f"| empirical risk (upper) | {format_up(upper, digits)} |",
        f"| δ | {res['delta_budget']['total']:g} |",
    ]
    lines += [f"| gate | {reason} |" for reason in gate["reasons"]]
    return "\n".join(lines) + "\n\n"


def append_step_summary(
    report: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> bool:
    """Append :func:`summary_markdown` to the file named by ``GITHUB_STEP_SUMMARY``, if set.

    Returns whether a summary was written. An unwritable file is bad input (exit 3), named.
    """
    target = (os.environ if environ is None else environ).get(ENV_VAR)
    if not target:
        return False
    try:
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.write(summary_markdown(report))
    except OSError as exc:
        raise InvalidInputError(
            f"{ENV_VAR}={target}: cannot append the job summary ({exc.strerror})"
        ) from None
    return True

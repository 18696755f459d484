"""Paper tables from reports: one row per report, as Markdown, LaTeX (booktabs) or CSV.

Every bound-like number (the bound, the empirical-risk upper bound, the KL or code length) is
rounded **up** at the chosen number of decimals with :func:`pacbound.bounds.format_up`, so a
printed table never claims more than was certified. δ is printed as given. Reports of
different methods share one table (the complexity column says KL for PAC-Bayes rows and code
length for compression rows); what each method contributes comes from its
:meth:`~pacbound.certify.method.Method.facts`. Reports of an older schema version are
upgraded on reading (:func:`pacbound.report.validate.load_report`).

After the certificate's own columns come what qualifies it: the method's qualifiers (e.g.
the prior mean and the posterior family of a Gaussian row), and the held-out test-set bound
with its own δ when the report has one (a separate statement about the checkpoint, rounded
up too). A column no row uses is left out.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pacbound.bounds import format_up
from pacbound.certify.registry import METHODS
from pacbound.errors import InvalidInputError


class TableFormat(str, Enum):
    MARKDOWN = "markdown"
    LATEX = "latex"
    CSV = "csv"


_DIGIT_WORDS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]


@dataclass(frozen=True)
class Row:
    """The numbers of one report that a paper table needs (full precision)."""

    label: str
    method: str
    classifier: str
    n: int
    empirical_risk: float  # the empirical-risk upper bound the certificate used
    kl_nats: float | None
    code_length_bits: int | None
    delta: float
    bound: float
    non_vacuous: bool
    chance_error: float
    qualifiers: Mapping[str, str] = field(default_factory=dict)  # e.g. prior, posterior
    heldout_bound: float | None = None
    heldout_delta: float | None = None

    @classmethod
    def of(cls, label: str, report: Mapping[str, Any]) -> Row:
        res = report["results"]
        facts = METHODS[res["method"]].facts(res)
        heldout = res.get("heldout") or {}
        return cls(
            label=label,
            method=res["method"],
            classifier=facts.classifier,
            n=res["n"],
            empirical_risk=facts.empirical_risk_upper,
            kl_nats=facts.kl_nats,
            code_length_bits=facts.code_length_bits,
            delta=res["delta_budget"]["total"],
            bound=res["bound"],
            non_vacuous=res["verdict"]["non_vacuous"],
            chance_error=res["verdict"]["chance_error"],
            qualifiers=dict(facts.qualifiers),
            heldout_bound=heldout.get("bound"),
            heldout_delta=heldout.get("delta"),
        )


def rows_of(paths: Sequence[Path], reports: Sequence[Mapping[str, Any]]) -> list[Row]:
    """One row per report, labelled by file name (or the folder of a ``report.json``), made
    unique by the parent folder."""
    labels = [p.parent.name if p.stem == "report" and p.parent.name else p.stem for p in paths]
    for i, p in enumerate(paths):
        if labels.count(p.stem) > 1:
            labels[i] = f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem
    if len(set(labels)) != len(labels):
        raise InvalidInputError("the same report was given twice; give each report once")
    return [Row.of(label, rep) for label, rep in zip(labels, reports, strict=True)]


def _cells(row: Row, digits: int) -> dict[str, str]:
    return {
        "report": row.label,
        "method": row.method,
        "certified": row.classifier,
        "n": str(row.n),
        "risk_upper": format_up(row.empirical_risk, digits),
        "kl_nats": "" if row.kl_nats is None else format_up(row.kl_nats, 2),
        "code_bits": "" if row.code_length_bits is None else str(row.code_length_bits),
        "delta": f"{row.delta:g}",
        "bound": format_up(row.bound, digits),
        "non_vacuous": "yes" if row.non_vacuous else "no",
        **row.qualifiers,
        "heldout": "" if row.heldout_bound is None else format_up(row.heldout_bound, digits),
        "heldout_delta": "" if row.heldout_delta is None else f"{row.heldout_delta:g}",
    }


HEADERS = {
    "report": "report",
    "method": "method",
    "certified": "certified classifier",
    "n": "n",
    "risk_upper": "empirical risk (upper)",
    "kl_nats": "KL (nats)",
    "code_bits": "code length (bits)",
    "delta": "δ",
    "bound": "bound (rounded up)",
    "non_vacuous": "non-vacuous",
    "heldout": "held-out bound (rounded up)",
    "heldout_delta": "held-out δ",
}
#: How the qualifiers methods name are headed (any other is headed by its own name).
QUALIFIER_HEADERS = {"prior": "prior mean", "posterior": "posterior Q"}
#: Right-aligned (and, in LaTeX, given a macro) columns.
NUMERIC = {"n", "risk_upper", "kl_nats", "code_bits", "delta", "bound", "heldout", "heldout_delta"}


def _header(column: str) -> str:
    return HEADERS.get(column) or QUALIFIER_HEADERS.get(column, column)


def _columns(rows: Sequence[Row]) -> list[str]:
    """The certificate's columns, then the qualifiers any row has, then the held-out bound;
    the complexity column no row uses is left out."""
    keep = [c for c in HEADERS if c not in ("heldout", "heldout_delta")]
    if all(r.kl_nats is None for r in rows):
        keep.remove("kl_nats")
    if all(r.code_length_bits is None for r in rows):
        keep.remove("code_bits")
    for row in rows:
        keep += [q for q in row.qualifiers if q not in keep]
    if any(r.heldout_bound is not None for r in rows):
        keep += ["heldout", "heldout_delta"]
    return keep


def _qualifying(column: str) -> bool:
    """Columns after ``bound_exact`` in CSV: the qualifiers and the held-out bound."""
    return column not in HEADERS or column in ("heldout", "heldout_delta")


def markdown(rows: Sequence[Row], digits: int = 4) -> str:
    cols = _columns(rows)
    lines = [
        "| " + " | ".join(_header(c) for c in cols) + " |",
        "|" + "|".join("---:" if c in NUMERIC else "---" for c in cols) + "|",
    ]
    for row in rows:
        cells = _cells(row, digits)
        lines.append("| " + " | ".join(cells.get(c, "").replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Row], digits: int = 4) -> str:
    """CSV with the rounded-up cells plus ``bound_exact`` (the full-precision float), then the
    qualifying columns (prior, posterior, held-out bound and δ) where any row has them."""
    cols = _columns(rows)
    main = [c for c in cols if not _qualifying(c)]
    extra = [c for c in cols if _qualifying(c)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*main, "bound_exact", *extra])
    for row in rows:
        cells = _cells(row, digits)
        writer.writerow(
            [*(cells[c] for c in main), repr(row.bound), *(cells.get(c, "") for c in extra)]
        )
    return buffer.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def macro_name(label: str) -> str:
    """A TeX control-word suffix from a label: letters kept, digits spelled, CamelCase.

    >>> macro_name("mnist_run-2")
    'MnistRunTwo'
    """
    words = re.findall(r"[A-Za-z]+|[0-9]", label)
    out = "".join(_DIGIT_WORDS[int(w)] if w.isdigit() else w[0].upper() + w[1:] for w in words)
    return out or "Report"


def latex(rows: Sequence[Row], digits: int = 4, prefix: str = "pb") -> str:
    """``\\newcommand`` macros for every number, then a booktabs table that uses them."""
    if not re.fullmatch(r"[A-Za-z]+", prefix):
        raise InvalidInputError(
            f"--macro-prefix {prefix!r}: TeX macro names take letters only", param="--macro-prefix"
        )
    cols = _columns(rows)
    names = _unique([macro_name(r.label) for r in rows])
    macros = [
        "% Generated by pacbound report; bounds are rounded up. Requires \\usepackage{booktabs}."
    ]
    body = []
    for row, name in zip(rows, names, strict=True):
        cells = _cells(row, digits)
        tex = []
        for c in cols:
            if c in NUMERIC and cells[c]:
                macro = f"\\{prefix}{_MACRO_FIELD[c]}{name}"
                macros.append(f"\\newcommand{{{macro}}}{{{cells[c]}}}")
                tex.append(macro + "{}")
            else:
                tex.append(latex_escape(cells.get(c, "")))
        body.append(" & ".join(tex) + r" \\")
    align = "".join("r" if c in NUMERIC else "l" for c in cols)
    head = " & ".join(latex_escape(_header(c)).replace("δ", r"$\delta$") for c in cols)
    table = [
        r"\begin{tabular}{" + align + "}",
        r"\toprule",
        head + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join([*macros, "", *table]) + "\n"


_MACRO_FIELD = {
    "n": "N",
    "risk_upper": "Risk",
    "kl_nats": "KL",
    "code_bits": "Bits",
    "delta": "Delta",
    "bound": "Bound",
    "heldout": "HeldoutBound",
    "heldout_delta": "HeldoutDelta",
}


def _unique(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        candidate, k = name, 1
        while candidate in out:
            k += 1
            candidate = name + "X" * (k - 1)
        out.append(candidate)
    return out


def render(rows: Sequence[Row], fmt: TableFormat, *, digits: int = 4, prefix: str = "pb") -> str:
    if fmt is TableFormat.MARKDOWN:
        return markdown(rows, digits)
    if fmt is TableFormat.LATEX:
        return latex(rows, digits, prefix)
    return csv_table(rows, digits)

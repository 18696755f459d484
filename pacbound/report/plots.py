"""Pictures of reports: of one, the bound along the searched scale and where its slack comes
from; of several, the certified bound against n (with approximations, e.g. EP's, dashed).

matplotlib is an optional extra (``pip install 'pacbound[plot]'``), imported only here and
only when a plot is drawn; figures are drawn with the Agg canvas (no display, no pyplot state).

The slack picture splits the bound into stacked parts: the method's parts of the empirical
risk upper bound (e.g. the estimate and the Monte-Carlo slack), and the complexity slack
(bound minus the risk upper bound). The complexity slack comes from the method's named
complexity terms, e.g. (KL + ln(2√n) + ln(1/δ) + ln G)/n for PAC-Bayes-kl, or
(K ln 2 + ln(1/δ))/n for the Occam bound; it is apportioned among those terms in proportion
to their nats (the inversion of the kl is not linear, so this is a picture of shares, not an
exact decomposition). Both, and the search curve, come from the method's
:meth:`~pacbound.certify.method.Method.facts`.

Every bound written on a picture is rounded **up** (:func:`pacbound.bounds.format_up`), as in
the tables and the terminal; the shares of the slack are pictures, printed to nearest.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacbound.bounds import format_up
from pacbound.certify.registry import METHODS
from pacbound.errors import InvalidInputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSTALL_HINT = "plotting needs matplotlib: install it with pip install 'pacbound[plot]'"


@dataclass(frozen=True)
class SlackPart:
    """One stacked segment of the bound (in risk units)."""

    name: str
    value: float


def slack_parts(results: Mapping[str, Any]) -> list[SlackPart]:
    """The bound as a sum of named parts (see the module docstring); they add up to it."""
    facts = METHODS[results["method"]].facts(results)
    parts = [SlackPart(name, value) for name, value in facts.risk_parts]
    complexity = max(results["bound"] - facts.empirical_risk_upper, 0.0)
    total = sum(nats for _, nats in facts.complexity_parts)
    if total > 0:
        parts += [SlackPart(name, complexity * v / total) for name, v in facts.complexity_parts]
    return parts


def _figure() -> tuple[Figure, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InvalidInputError(INSTALL_HINT) from None
    fig = Figure(figsize=(11.0, 4.4), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, 2, width_ratios=(1.2, 1.0))


def _draw_search(ax: Axes, results: Mapping[str, Any]) -> None:
    search = METHODS[results["method"]].facts(results).search
    bound = results["bound"]
    if search is not None and search.x:
        xs, ys = list(search.x), list(search.bound)
        ax.plot(xs, ys, marker="o", markersize=3, label="estimated bound per candidate")
        if search.log_x and min(xs) > 0:
            ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no search curve recorded", ha="center", transform=ax.transAxes)
    ax.axhline(bound, color="C3", linestyle="--", label=f"certified bound {format_up(bound, 4)}")
    for i, (name, value) in enumerate(METHODS[results["method"]].facts(results).approximations):
        ax.axhline(
            value, color=f"C{4 + i}", linestyle="-.", label=f"{name}: {value:.4f} (not a bound)"
        )
    if search is not None and search.chosen is not None:
        ax.axvline(search.chosen, color="C2", linestyle=":", label="chosen")
    ax.axhline(results["verdict"]["chance_error"], color="grey", linewidth=0.8, label="chance")
    ax.set_xlabel("" if search is None else search.label)
    ax.set_ylabel("bound on the 0-1 error")
    ax.set_title("bound versus the searched scale")
    ax.legend(fontsize=8)


def _draw_slack(ax: Axes, results: Mapping[str, Any]) -> None:
    parts = slack_parts(results)
    left = 0.0
    for i, part in enumerate(parts):
        ax.barh(
            [0], [part.value], height=0.6, left=left, color=f"C{i}",
            label=f"{part.name}: {part.value:.4f}",
        )  # fmt: skip
        left += part.value
    ax.axvline(results["bound"], color="k", linewidth=1.0)
    ax.set_xlim(0.0, max(results["bound"] * 1.05, 1e-3))
    ax.set_ylim(-0.5, 1.7)
    ax.set_yticks([])
    ax.set_xlabel("0-1 error")
    ax.set_title(f"where the bound {format_up(results['bound'], 4)} comes from")
    ax.legend(fontsize=8, loc="upper left", ncol=2)


def figure(report: Mapping[str, Any]) -> Figure:
    """The figure: the search curve (left) and the slack decomposition (right)."""
    results = report["results"]
    fig, (left, right) = _figure()
    _draw_search(left, results)
    _draw_slack(right, results)
    fig.suptitle(f"pacbound certificate ({results['method']}, {results['inequality']})")
    return fig


def _series_label(results: Mapping[str, Any]) -> str:
    """What one line of the bound-versus-n picture is: method, classifier, qualifiers."""
    facts = METHODS[results["method"]].facts(results)
    qualifiers = ", ".join(facts.qualifiers.values())
    return f"{results['method']}: {facts.classifier}" + (f" ({qualifiers})" if qualifiers else "")


def bound_vs_n_figure(reports: Sequence[Mapping[str, Any]]) -> Figure:
    """Several reports: the certified bound against n, one line per method and setting
    (solid, rounded up in the legend), and each method's approximations dashed (e.g. the
    bound EP's ln P(U) would give: the gap to the certified line is the price of rigour)."""
    series: dict[str, list[tuple[int, float, tuple[tuple[str, float], ...]]]] = {}
    for report in reports:
        res = report["results"]
        approx = METHODS[res["method"]].facts(res).approximations
        series.setdefault(_series_label(res), []).append((res["n"], res["bound"], approx))
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InvalidInputError(INSTALL_HINT) from None
    fig = Figure(figsize=(8.0, 5.0), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (label, points) in enumerate(series.items()):
        points.sort(key=lambda p: p[0])
        ns = [p[0] for p in points]
        ax.plot(ns, [p[1] for p in points], marker="o", color=f"C{i}", label=label)
        for j, name in enumerate(dict.fromkeys(a[0] for p in points for a in p[2])):
            pairs = [(p[0], dict(p[2])[name]) for p in points if name in dict(p[2])]
            ax.plot(
                [n for n, _ in pairs],
                [v for _, v in pairs],
                linestyle="--" if j == 0 else ":",
                marker="x",
                color=f"C{i}",
                label=f"{name} (approximation, not a bound)",
            )
        for n, value, _ in points:
            ax.annotate(format_up(value, 4), (n, value), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    chance = {r["results"]["verdict"]["chance_error"] for r in reports}
    for value in sorted(chance):
        ax.axhline(value, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("n (training examples in the bound)")
    ax.set_ylabel("bound on the 0-1 error (grey: chance)")
    ax.set_title("certified bound versus n")
    ax.legend(fontsize=7)
    return fig


def plot_png(report: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> bytes:
    """A PNG: of one report, the search curve (left) and the slack decomposition (right);
    of several, the bound against n (:func:`bound_vs_n_figure`)."""
    if isinstance(report, Mapping):
        fig = figure(report)
    else:
        fig = figure(report[0]) if len(report) == 1 else bound_vs_n_figure(report)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()

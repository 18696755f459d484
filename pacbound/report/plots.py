"""Pictures of a report: the bound along the searched scale, and where its slack comes from.

matplotlib is an optional extra (``pip install 'pacbound[plot]'``), imported only here and
only when a plot is drawn; figures are drawn with the Agg canvas (no display, no pyplot state).

The slack picture splits the bound into stacked parts: the empirical risk estimate, the
Monte-Carlo slack (its upper bound minus the estimate; Gaussian only), and the complexity
slack (bound minus the risk upper bound). The complexity slack comes from
(KL + ln(2√n) + ln(1/δ) + ln G)/n for PAC-Bayes-kl, or (K ln 2 + ln(1/δ))/n for the Occam
bound; it is apportioned among those terms in proportion to their nats (the inversion of the
kl is not linear, so this is a picture of shares, not an exact decomposition).

Every bound written on a picture is rounded **up** (:func:`pacbound.bounds.format_up`), as in
the tables and the terminal; the shares of the slack are pictures, printed to nearest.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacbound.bounds import format_up
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


def slack_parts(results: dict[str, Any]) -> list[SlackPart]:
    """The bound as a sum of named parts (see the module docstring); they add up to it."""
    bound = results["bound"]
    budget = results["delta_budget"]["parts"]
    if results["method"] == "gaussian":
        emp = results["empirical_risk"]
        estimate, upper = emp["estimate"], emp["upper_bound"]
        n = results["n"]
        pac = next(p for p in budget if p["name"] == "pac-bayes")
        nats = {
            "KL term": results["kl_nats"],
            "ln 2√n": math.log(2.0 * math.sqrt(n)),
            "δ term ln(1/δ)": math.log(1.0 / pac["delta"]),
            "grid cost ln G": math.log(pac["grid_size"]),
        }
        parts = [
            SlackPart("empirical risk (estimate)", estimate),
            SlackPart("Monte-Carlo slack", upper - estimate),
        ]
    else:
        upper = results["empirical_risk"]
        occam = budget[0]
        nats = {
            "code length K ln 2": results["code_length_nats"],
            "δ term ln(1/δ)": math.log(1.0 / occam["per_choice"]),
        }
        parts = [SlackPart("empirical risk k/n", upper)]
    complexity = max(bound - upper, 0.0)
    total = sum(nats.values())
    parts += [SlackPart(name, complexity * v / total) for name, v in nats.items() if total > 0]
    return parts


def search_curve(results: dict[str, Any]) -> tuple[str, list[float], list[float], float | None]:
    """(x-axis label, x, estimated bound, chosen x) of the search recorded in the report."""
    if results["method"] == "gaussian":
        post = results["posterior"]
        points = post.get("isotropic_search") or []
        xs = [p["sigma"] for p in points]
        ys = [p["estimated_bound"] for p in points]
        return "posterior σ (isotropic search)", xs, ys, post.get("sigma_isotropic_search")
    points = sorted(results["search"], key=lambda c: c["code_length_bits"])
    return (
        "code length (bits)",
        [float(c["code_length_bits"]) for c in points],
        [c["bound"] for c in points],
        float(results["code_length_bits"]),
    )


def _figure() -> tuple[Figure, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InvalidInputError(INSTALL_HINT) from None
    fig = Figure(figsize=(11.0, 4.4), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, 2, width_ratios=(1.2, 1.0))


def _draw_search(ax: Axes, results: dict[str, Any]) -> None:
    label, xs, ys, chosen = search_curve(results)
    bound = results["bound"]
    if xs:
        ax.plot(xs, ys, marker="o", markersize=3, label="estimated bound per candidate")
        if results["method"] == "gaussian" and min(xs) > 0:
            ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no search curve recorded", ha="center", transform=ax.transAxes)
    ax.axhline(bound, color="C3", linestyle="--", label=f"certified bound {format_up(bound, 4)}")
    if chosen is not None:
        ax.axvline(chosen, color="C2", linestyle=":", label="chosen")
    ax.axhline(results["verdict"]["chance_error"], color="grey", linewidth=0.8, label="chance")
    ax.set_xlabel(label)
    ax.set_ylabel("bound on the 0-1 error")
    ax.set_title("bound versus the searched scale")
    ax.legend(fontsize=8)


def _draw_slack(ax: Axes, results: dict[str, Any]) -> None:
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


def figure(report: dict[str, Any]) -> Figure:
    """The figure: the search curve (left) and the slack decomposition (right)."""
    results = report["results"]
    fig, (left, right) = _figure()
    _draw_search(left, results)
    _draw_slack(right, results)
    fig.suptitle(f"pacbound certificate ({results['method']}, {results['inequality']})")
    return fig


def plot_png(report: dict[str, Any]) -> bytes:
    """A PNG with the search curve (left) and the slack decomposition (right)."""
    fig = figure(report)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()

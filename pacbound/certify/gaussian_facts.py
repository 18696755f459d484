"""What tables, plots, the terminal and the step summary show of a Gaussian results block."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pacbound.bounds import format_up
from pacbound.certify.method import Facts, SearchCurve

TITLE = "pacbound certificate (PAC-Bayes-kl, Gaussian posterior)"


def gaussian_facts(res: Mapping[str, Any]) -> Facts:
    """The Gaussian rows: KL, Monte-Carlo risk, δ parts, prior, posterior, statements."""
    emp = res["empirical_risk"]
    pac = next(p for p in res["delta_budget"]["parts"] if p["name"] == "pac-bayes")
    post = res["posterior"]
    points = post.get("isotropic_search") or []
    xs = tuple(p["sigma"] for p in points)
    return Facts(
        classifier="Gaussian posterior Q",
        empirical_risk_upper=emp["upper_bound"],
        kl_nats=res["kl_nats"],
        code_length_bits=None,
        qualifiers={"prior": res["prior"]["mean"], "posterior": _posterior_qualifier(res)},
        risk_parts=(
            ("empirical risk (estimate)", emp["estimate"]),
            ("Monte-Carlo slack", emp["upper_bound"] - emp["estimate"]),
        ),
        complexity_parts=(
            ("KL term", res["kl_nats"]),
            ("ln 2√n", math.log(2.0 * math.sqrt(res["n"]))),
            ("δ term ln(1/δ)", math.log(1.0 / pac["delta"])),
            ("grid cost ln G", math.log(pac["grid_size"])),
        ),
        search=SearchCurve(
            "posterior σ (isotropic search)",
            xs,
            tuple(p["estimated_bound"] for p in points),
            post.get("sigma_isotropic_search"),
            log_x=bool(xs) and min(xs) > 0,
        ),
        rows=_rows(res),
        title=TITLE,
    )


def _per_batch(emp: Mapping[str, Any]) -> bool:
    return emp.get("draws_per", "example") == "batch"  # reports before --mc-draws: example


def _posterior_qualifier(res: Mapping[str, Any]) -> str:
    """The table's posterior column; per-batch Monte-Carlo draws are said there."""
    emp, text = res["empirical_risk"], f"Gaussian, {res['posterior']['kind']}"
    return f"{text}, per-batch draws (B={emp['batch']})" if _per_batch(emp) else text


def _draws(emp: Mapping[str, Any]) -> str:
    """How many independent draws the Monte-Carlo bound counts, and of what."""
    if _per_batch(emp):
        return f"{emp['draws']} draws, one per batch of {emp['batch']} examples"
    return f"{emp['draws']} draws"


def _rows(res: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The terminal table's rows after the certified classifier, bound and verdict."""
    emp = res["empirical_risk"]
    rows = [
        ("n (examples in the bound)", str(res["n"])),
        ("KL(Q‖P)", f"{format_up(res['kl_nats'], 2)} nats"),
        ("empirical risk of Q", f"{emp['estimate']:.6f} (Monte-Carlo estimate)"),
        (
            "  upper bound",
            f"{format_up(emp['upper_bound'], 6)} ({_draws(emp)}, {emp['mc_passes']} passes)",
        ),
    ]
    for part in res["delta_budget"]["parts"]:
        grid = f", grid of {part['grid_size']}" if part["grid_size"] > 1 else ""
        rows.append((f"δ: {part['name']}", f"{part['delta']:.6g}{grid}"))
    rows.append(("δ total", f"{res['delta_budget']['total']:.6g}"))
    prior = res["prior"]
    rows.append(("prior", f"mean = {prior['mean']}, σ_p = {prior['scale']:.6g}"))
    if prior.get("error"):
        err = prior["error"]
        rows.append(
            (
                "  prior mean's own error",
                f"{err['prior_split']:.4f} on S_prior, {err['bound_split']:.4f} on S_bound",
            )
        )
    post = res["posterior"]
    rows.append(("posterior", f"{post['kind']}, σ median {post['sigma_median']:.4g}"))
    if post.get("normalization"):
        rows.append(("  normalization layers", normalization_summary(post["normalization"])))
    for name, info in res["information_only"].items():
        rows.append((f"({name}, information only)", format_up(info["value"], 4)))
    return (*rows, *_statement_rows(res))


def _statement_rows(res: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The statements about the checkpoint: held-out bound, agreement, its own bound."""
    rows = []
    if res["heldout"] is not None:
        h = res["heldout"]
        rows.append(
            (
                "held-out bound (checkpoint)",
                f"{format_up(h['bound'], 4)}  ({h['errors']}/{h['n']} errors, "
                f"δ = {h['delta']:g}, separate statement)",
            )
        )
    agree = res["agreement"]
    rows.append(
        (
            "Q vs checkpoint (bound data)",
            f"disagree on {agree['disagreement_rate']:.4f}; checkpoint's error "
            f"{agree['checkpoint_error_rate']:.4f} (information)",
        )
    )
    if res["checkpoint"] is not None:
        c, d = res["checkpoint"], res["checkpoint"]["disagreement"]
        rows.append(
            (
                "bound on the checkpoint itself",
                f"{format_up(c['bound'], 4)}  (L(h) ≤ L(Q) + D, D ≤ "
                f"{format_up(d['upper_bound'], 4)} from {d['disagreements']}/{d['inputs']} "
                f"{d['source']} inputs; δ total {c['delta_total']:g})",
            )
        )
    return rows


def normalization_summary(entries: list[Mapping[str, str]]) -> str:
    """One line for ``results.posterior.normalization``: how many modules of each type, and
    how each group was treated (e.g. ``2 BatchNorm2d: per-channel affine a, c covered by
    the posterior; prior from the init statistics``)."""
    groups: dict[str, list[str]] = {}
    for entry in entries:
        groups.setdefault(entry["treatment"], []).append(entry["type"])
    parts = []
    for treatment, types in groups.items():
        counts = {t: types.count(t) for t in dict.fromkeys(types)}
        names = ", ".join(f"{n} {t}" for t, n in counts.items())
        parts.append(f"{names}: {treatment}")
    return "; ".join(parts)

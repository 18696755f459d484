"""What tables, plots, the terminal and the step summary show of a marginal results block.

Every bound-like number is rounded up (:func:`pacbound.bounds.format_up`); the EP value and
the held-out estimate are labelled as what they are (an approximation, an estimate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pacbound.bounds import format_up
from pacbound.certify.method import Facts, SearchCurve

TITLE = "pacbound certificate (PAC-Bayes-kl, GP prior conditioned on S: marginal likelihood)"


def _kernel_text(kernel: Mapping[str, Any]) -> str:
    """The kernel in a few ASCII words (also the table's ``kernel`` column, LaTeX-safe)."""
    if kernel["name"] == "monte-carlo":
        extra = kernel["extra"]
        return f"monte-carlo ({extra['architecture']}, {extra['draws']} draws)"
    text = f"{kernel['name']}, depth {kernel['depth']}, weight std {kernel['sigma_w']:g}"
    return f"{text}, bias std {kernel['sigma_b']:g}"


def marginal_facts(res: Mapping[str, Any]) -> Facts:
    """The marginal rows: kernel, ln P(U) (EP and certified), the gap, δ parts, held-out."""
    pac = next(p for p in res["delta_budget"]["parts"] if p["name"] == "pac-bayes")
    # grid points whose kernel was not positive definite gave no bound (they still cost δ)
    search = [p for p in res.get("search") or [] if "failed" not in p]
    # the certified KL split at EP's value: the gap is what rigour costs (clipped to [0, KL])
    ep_part = min(max(-res["ep"]["log_z"], 0.0), res["kl_nats"])
    return Facts(
        classifier="GP prior conditioned on S",
        empirical_risk_upper=res["empirical_risk"]["upper_bound"],
        kl_nats=res["kl_nats"],
        code_length_bits=None,
        qualifiers={"kernel": _kernel_text(res["kernel"])},
        risk_parts=(("empirical risk (Q fits S)", res["empirical_risk"]["upper_bound"]),),
        complexity_parts=(
            ("−ln P(U), EP approximation", ep_part),
            ("certification gap (IS, ln 1/δ_IS)", res["kl_nats"] - ep_part),
            ("ln 2√n", math.log(2.0 * math.sqrt(res["n"]))),
            ("δ term ln(1/δ_PB)", math.log(1.0 / pac["delta"])),
            ("grid cost ln G", math.log(pac["grid_size"])),
        ),
        search=SearchCurve(
            "kernel grid point (σ_w, σ_b)",
            tuple(float(p["grid_index"]) for p in search),
            tuple(p["bound"] for p in search),
            float(res["kernel"]["grid_index"]) if search else None,
        ),
        rows=_rows(res),
        title=TITLE,
        approximations=(("bound if EP's ln P(U) were exact", res["ep"]["approximate_bound"]),),
    )


def _rows(res: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    ep, lower, labels = res["ep"], res["log_orthant"], res["labels"]
    mapped = f", label map {labels['label_map']}" if labels["label_map"] else ""
    rows = [
        ("kernel", _kernel_text(res["kernel"]) + f", jitter {res['kernel']['jitter']:g}"),
        ("n (examples in the bound)", str(res["n"])),
        ("classes", f"{labels['classes']} ({labels['constraints']} constraints{mapped})"),
        ("certified ln P(U) ≥", f"{-float(format_up(res['kl_nats'], 4)):.4f} nats"),
        (
            "  importance sampling",
            f"{lower['samples']} draws, seed {lower['seed']}, effective sample size "
            f"{lower['effective_sample_size']:.1f}, δ_IS {lower['delta']:.6g}",
        ),
        ("KL(Q‖P) = −ln P(U) ≤", f"{format_up(res['kl_nats'], 4)} nats"),
        ("EP ln P(U) ≈", f"{ep['log_z']:.4f} nats (approximation, not a bound)"),
        ("  gap EP − certified", f"{format_up(res['gap_nats'], 4)} nats"),
        (
            "  bound if EP were exact",
            f"{ep['approximate_bound']:.4f} (approximation, not a certificate)",
        ),
    ]
    for part in res["delta_budget"]["parts"]:
        grid = f", grid of {part['grid_size']}" if part["grid_size"] > 1 else ""
        rows.append((f"δ: {part['name']}", f"{part['delta']:.6g}{grid}"))
    rows.append(("δ total", f"{res['delta_budget']['total']:.6g}"))
    heldout = res.get("heldout")
    if heldout is not None:
        rows.append(
            (
                "held-out error of Q",
                f"{heldout['q_error_estimate']:.4f} on {heldout['examples']} examples "
                f"(estimate, effective sample size {heldout['effective_sample_size']:.1f}; "
                "not a bound)",
            )
        )
        if heldout["checkpoint_error"] is not None:
            rows.append(("held-out error of the checkpoint", f"{heldout['checkpoint_error']:.4f}"))
    return tuple(rows)

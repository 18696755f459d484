"""Re-derive a held-out statement of a report from the held-out set it records.

A held-out statement (the checkpoint's test-set bound ``results.heldout``, and any other
statement computed on inputs never used for anything else) is only as good as the set it was
computed on. :func:`recheck_heldout` is the one place ``pacbound verify`` re-derives such a
statement: the report must record the set (``inputs.heldout``, or another ``inputs`` key),
the set is reloaded exactly as recorded (path, split, labels, normalization, subset; the
files' sha256 were checked by :func:`pacbound.report.recheck.check_input_files`), and a
caller-supplied function recomputes the statement's fields from it, which are then compared
with the reported ones, field by field. A statement without its recorded set, or a recorded
set whose statement is missing, is a disagreement.

:func:`deterministic_test_set` is that function for a deterministic classifier (the
checkpoint, a decoded compressed model): its errors on the set and the exact binomial
test-set bound, the code ``certify`` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pacbound.report.recheck import FieldCheck, load_recorded_dataset

#: What a missing statement or a missing set is shown as in the comparison.
NO_STATEMENT = "(a statement: the report records the set inputs.{source})"
NO_SET = "(no set recorded in inputs.{source}: the numbers cannot be re-derived)"


def recheck_heldout(
    report: dict[str, Any],
    root: Path,
    *,
    field: str,
    recompute: Callable[[Any], Mapping[str, Any]],
    source: str = "heldout",
    expected: bool | None = None,
    load: Callable[[dict[str, Any], Path], Any] = load_recorded_dataset,
) -> list[FieldCheck]:
    """Field checks of the held-out statement ``results[field]``.

    ``recompute(dataset)`` gets the set ``inputs[source]`` reloaded as recorded (a
    :class:`pacbound.io.Dataset`) and returns the statement's fields, recomputed (e.g.
    :func:`deterministic_test_set`); each is compared with the reported field of the same
    name, as ``f"{field}.{name}"``. ``expected`` says whether the report's options imply
    the statement (default: whenever the set is recorded): a statement that is expected
    but missing, or reported without a recorded set, is one disagreeing field ``field``.
    A statement that is neither reported nor expected gives no checks. ``load(record,
    root)`` reloads the set (default :func:`load_recorded_dataset`; e.g. an inputs-only
    loader for unlabeled inputs).
    """
    reported = report["results"].get(field)
    recorded = report["inputs"].get(source)
    expected = recorded is not None if expected is None else expected
    if reported is None:
        return [FieldCheck(field, None, NO_STATEMENT.format(source=source))] if expected else []
    if recorded is None:
        return [FieldCheck(field, reported, NO_SET.format(source=source))]
    recomputed = recompute(load(recorded, root))
    if not isinstance(reported, dict):
        return [FieldCheck(field, reported, recomputed)]
    return [
        FieldCheck(f"{field}.{name}", reported.get(name, "(missing)"), value)
        for name, value in recomputed.items()
    ]


def deterministic_test_set(
    model: torch.nn.Module,
    dataset: Any,
    *,
    delta: float,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """``errors``, ``n``, ``delta`` and ``bound`` of a deterministic model on a held-out set
    (exact binomial test-set bound), computed as ``certify`` computes them."""
    from pacbound.bounds import test_set_bound
    from pacbound.posterior.risk import count_errors

    count = count_errors(model.eval(), dataset.x, dataset.y, batch_size=batch_size, device=device)
    bound = test_set_bound(count.rate, n=count.evaluations, delta=delta)
    return {
        "errors": int(bound.terms["errors"]),
        "n": bound.n,
        "delta": bound.delta,
        "bound": bound.value,
    }

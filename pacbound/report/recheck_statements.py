"""Re-derive the statements a report makes about the user's checkpoint (MATH.md §11).

``results.checkpoint`` bounds the checkpoint h itself, L(h) ≤ L(certified) + D(h, certified),
with D bounded on inputs never used for anything else (``inputs.unlabeled``, or else the
held-out set's inputs). :func:`recheck_checkpoint_statement` reloads those inputs exactly as
recorded, recounts the disagreements with the caller's counter (the same code and random
stream certify used) and rebuilds the block with the same helper certify uses; every field
is then compared. A block without its recorded inputs, or recorded inputs without the
block, is a disagreement.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from pacbound.bounds import BoundResult
from pacbound.report.recheck import FieldCheck, _normalization, _resolve, load_recorded_dataset
from pacbound.report.recheck_heldout import recheck_heldout

#: ``count(x) -> (disagreements, inputs)`` between the checkpoint and the certified classifier.
DisagreementCounter = Callable[[Tensor], tuple[int, int]]


def load_recorded_features(record: dict[str, Any], root: Path) -> Any:
    """Inputs without labels (``--unlabeled``) exactly as the report describes them."""
    from pacbound.io import recorded_load_options
    from pacbound.io.datasets import load_features

    options = recorded_load_options(record)
    for label_only in ("label_map", "y_key"):
        options.pop(label_only, None)
    return load_features(
        _resolve(record["path"], root),
        normalize=_normalization(record["normalization"]),
        **options,
    )


def recheck_checkpoint_statement(
    report: dict[str, Any],
    root: Path,
    *,
    certificate: BoundResult,
    certified: str,
    delta_certified: float,
    delta_disagreement: float,
    count: DisagreementCounter,
) -> list[FieldCheck]:
    """Field checks of ``results.checkpoint`` against its re-derivation (see module doc)."""
    from pacbound.bounds.checkpoint import disagreement_bound
    from pacbound.certify.common import checkpoint_block

    inputs = report["inputs"]
    source = "unlabeled" if "unlabeled" in inputs else "heldout"

    def recompute(dataset: Any) -> dict[str, Any]:
        k, m = count(dataset.x)
        return checkpoint_block(
            certificate,
            disagreement_bound(k, m=m, delta=delta_disagreement),
            source=source,
            disagreements=k,
            inputs=m,
            certified=certified,
            delta_certified=delta_certified,
        )

    load = load_recorded_features if source == "unlabeled" else load_recorded_dataset
    return recheck_heldout(
        report, root, field="checkpoint", recompute=recompute, source=source, load=load
    )

"""Checks that cost nothing, run before any checkpoint or data set is read.

:func:`check_option_values` validates every number and grid the user can type, with the
option's own name in the message (``--seed``, never a library field name), so that a typo
fails in milliseconds instead of after loading a model and a data set.
:func:`check_disjoint_inputs` refuses held-out (or unlabeled) data that are the training
data again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pacbound.bounds.validation import (
    check_count,
    check_delta,
    check_open_interval,
    check_positive,
)
from pacbound.errors import InvalidInputError

#: Seeds are used as torch generator seeds with small offsets added.
MAX_SEED = 2**63 - 1


def _at_least(minimum: int) -> Callable[[Any, str], Any]:
    return lambda value, flag: check_count(value, flag, minimum=minimum)


def _unit_open(value: Any, flag: str) -> float:
    return check_open_interval(value, flag, 0.0, 1.0)


def _seed(value: Any, flag: str) -> int:
    seed = check_count(value, flag, minimum=0)
    if seed > MAX_SEED:
        raise InvalidInputError(f"{flag} must be at most 2**63 - 1, got {seed}", param=flag)
    return seed


def _levels(value: Any, flag: str) -> Any:
    from pacbound.compressors.codebooks import MAX_LEVELS

    return _int_grid(2, MAX_LEVELS)(value, flag)


def _int_grid(minimum: int, maximum: int | None = None) -> Callable[[Any, str], Any]:
    def check(value: Any, flag: str) -> Any:
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            check_count(v, flag, minimum=minimum)
            if maximum is not None and v > maximum:
                raise InvalidInputError(f"{flag} must be at most {maximum}, got {v}", param=flag)
        if len(set(values)) != len(values):
            raise InvalidInputError(
                f"{flag} lists a value twice ({','.join(map(str, values))}); list each once",
                param=flag,
            )
        return value

    return check


def _scale_grid(value: Any, flag: str) -> Any:
    from pacbound.posterior.priors import ScaleGrid

    return ScaleGrid.parse(value)


#: Option (parameter name) → its check, called with the value and the option's name.
CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "delta": check_delta,
    "mc_delta": check_delta,
    "heldout_delta": check_delta,
    "disagreement_delta": check_delta,
    "seed": _seed,
    "batch_size": _at_least(1),
    "mc_passes": _at_least(1),
    "prior_scales": _scale_grid,
    "prior_fraction": _unit_open,
    "prior_epochs": _at_least(1),
    "prior_lr": check_positive,
    "prior_augment_shift": _at_least(0),
    "posterior_epochs": _at_least(0),
    "posterior_lr": check_positive,
    "sigma_lr": check_positive,
    "p_min": _unit_open,
    "d": _int_grid(1),
    "levels": _levels,
    "subspace_epochs": _at_least(0),
    "subspace_lr": check_positive,
    "subspace_batch_size": _at_least(1),
    "qat_steps": _at_least(0),
    "qat_examples": _at_least(1),
    "qat_lr": check_positive,
    "kernel_depth": _at_least(0),
    "kernel_filter_size": _at_least(1),
    "kernel_draws": _at_least(2),
    "is_samples": _at_least(1),
    "is_delta": check_delta,
    "jitter": check_positive,
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_option_values(params: dict[str, Any]) -> None:
    """Validate every given option value of :data:`CHECKS` (exit 3, naming the option), and
    the relations between them (``--mc-delta`` < ``--delta``, ``--delta`` +
    ``--disagreement-delta`` < 1)."""
    for name, check in CHECKS.items():
        if params.get(name) is not None:
            check(params[name], _flag(name))
    mc, delta = params.get("mc_delta"), params.get("delta")
    if mc is not None and delta is not None and not mc < delta:
        raise InvalidInputError(
            f"--mc-delta ({mc:g}) must be smaller than --delta ({delta:g}): the rest of "
            "delta goes to the PAC-Bayes inequality",
            param="--mc-delta",
        )
    disagreement = params.get("disagreement_delta")
    if disagreement is not None and delta is not None and not delta + disagreement < 1.0:
        raise InvalidInputError(
            f"--delta ({delta:g}) plus --disagreement-delta ({disagreement:g}) must be below 1: "
            "the checkpoint's certificate holds with probability at least 1 - their sum",
            param="--disagreement-delta",
        )


#: Provenance fields that select which examples are read from the files.
_SELECTION = ("split", "subset_indices", "x_key")


def _same_examples(train: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether ``other`` reads examples of ``train`` again: every file it read is one of the
    training files (by sha256, whatever the path: a labels-free read of an IDX folder or a
    ``.npy`` folder reads only the features file), with the same split, subset and array.
    Labels, label maps, normalization, scaling and reshapes change how the examples look,
    not which they are."""
    files = {f["sha256"] for f in other.get("files", [])}
    train_files = {f["sha256"] for f in train.get("files", [])}
    if not files or not files <= train_files:
        return False
    return all(train.get(key) == other.get(key) for key in _SELECTION)


def check_disjoint_inputs(train_prov: Any, other_prov: Any, option: str) -> None:
    """Refuse (exit 3) data given to ``option`` (``--heldout``, ``--unlabeled``) that are the
    training data again: the same files (by sha256) read with the same split and subset
    (:func:`_same_examples`).

    Held-out examples must never have been used for anything else; the same examples under
    two names would give a "held-out" bound on the training data.
    """
    if _same_examples(train_prov.to_dict(), other_prov.to_dict()):
        hint = " (for an MNIST folder, e.g. --heldout-split test)" if option == "--heldout" else ""
        raise InvalidInputError(
            f"{option} {other_prov.path} holds the same examples as --data (same files, split "
            f"and subset): it must be data never used for training or the bound; give a "
            f"separate set{hint}",
            param=option,
        )


def check_same_input_shape(other: Any, data: Any, option: str) -> None:
    """Refuse inputs whose per-example shape is not the training data's (before any work)."""
    mine, theirs = tuple(other.x.shape[1:]), tuple(data.x.shape[1:])
    if mine != theirs:
        raise InvalidInputError(
            f"{option} {other.provenance.path}: each input has shape {list(mine)}, but the "
            f"--data inputs have {list(theirs)}; give inputs in the same format as --data",
            param=option,
        )

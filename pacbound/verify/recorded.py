"""What a report records about its inputs, loaded back: file hashes, the model, the data sets.

``verify`` first checks that every input file the report records still has its recorded
sha256 (:func:`check_input_files`: a changed or missing file is bad input, named), then
reloads the checkpoint and the data sets exactly as the report describes them (split, labels,
format options, shape and scaling rules, normalization, subset) into the
:class:`~pacbound.certify.method.RunInputs` a method certified with (:func:`recorded_inputs`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pacbound.certify.method import RunInputs
from pacbound.errors import InvalidInputError


@contextmanager
def import_path(root: Path) -> Iterator[None]:
    """``root`` first on ``sys.path`` for the block (restored afterwards): a report made with
    ``--arch mymodule:factory`` finds the user's module next to the report."""
    saved = list(sys.path)
    sys.path.insert(0, str(root.resolve()))
    try:
        yield
    finally:
        sys.path[:] = saved


def resolve(path: str, root: Path) -> Path:
    """A recorded path: as it is when absolute, else relative to ``root``."""
    p = Path(path)
    return p if p.is_absolute() else root / p


def recorded_files(report: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(what, path, sha256) of every input file the report records."""
    inputs = report["inputs"]
    if "model" in inputs:  # a method that certifies without a checkpoint records none
        ckpt = inputs["model"]["provenance"]["checkpoint"]
        yield "checkpoint", ckpt["path"], ckpt["sha256"]
    for key in ("data", "heldout", "unlabeled"):
        if key in inputs:
            for record in inputs[key]["files"]:
                yield f"{key} file", record["path"], record["sha256"]
    for key, record in inputs.items():
        if key not in ("model", "data", "heldout", "unlabeled"):
            yield f"{key} file", record["path"], record["sha256"]


def check_input_files(report: Mapping[str, Any], root: Path) -> None:
    """Raise InvalidInputError naming the first input file that is missing or changed."""
    from pacbound.io import sha256_file

    for what, path, expected in recorded_files(report):
        file = resolve(path, root)
        if not file.is_file():
            raise InvalidInputError(
                f"the {what} {file} recorded in the report does not exist; run verify from the "
                "folder certify ran in, or pass --root"
            )
        actual = sha256_file(file)
        if actual != expected:
            raise InvalidInputError(
                f"the {what} {file} changed since the report was written: its sha256 is "
                f"{actual[:12]}…, the report recorded {expected[:12]}…"
            )


def _normalization(text: str | None) -> Any:
    if text is None:
        return None
    from pacbound.io import Normalization

    match = re.fullmatch(r"mean=\[(.*)\], std=\[(.*)\]", text)
    if match is None:
        raise InvalidInputError(f"cannot read the recorded normalization {text!r}")
    mean, std = (tuple(float(v) for v in g.split(",")) for g in match.groups())
    return Normalization(mean, std)


def load_recorded_dataset(record: Mapping[str, Any], root: Path) -> Any:
    """The labeled data set exactly as the report describes it."""
    from pacbound.io import load_dataset, recorded_load_options

    return load_dataset(
        resolve(record["path"], root),
        normalize=_normalization(record["normalization"]),
        **recorded_load_options(dict(record)),
    )


def load_recorded_features(record: Mapping[str, Any], root: Path) -> Any:
    """Inputs without labels (``--unlabeled``) exactly as the report describes them."""
    from pacbound.io import recorded_load_options
    from pacbound.io.datasets import load_features

    options = recorded_load_options(dict(record))
    for label_only in ("label_map", "y_key"):
        options.pop(label_only, None)
    return load_features(
        resolve(record["path"], root),
        normalize=_normalization(record["normalization"]),
        **options,
    )


def load_recorded_model(
    report: Mapping[str, Any],
    root: Path,
    device: torch.device,
    *,
    unsafe_allow_pickle: bool = False,
) -> Any:
    """The checkpoint, loaded with the recorded architecture and stripped prefix."""
    from pacbound.io import load_model

    prov = report["inputs"]["model"]["provenance"]
    # the prefix certify stripped (--strip-prefix, or DataParallel's module.); a model that
    # is its own architecture (.pt2, whole pickle) is loaded as it is
    prefix = prov["checkpoint"].get("stripped_prefix") if prov["architecture"] else None
    return load_model(
        resolve(prov["checkpoint"]["path"], root),
        arch=prov["architecture"],
        arch_kwargs=prov["arch_kwargs"],
        unsafe_allow_pickle=unsafe_allow_pickle,
        device=device,
        strip_prefix=prefix,
    )


def recorded_inputs(
    report: Mapping[str, Any],
    root: Path,
    device: torch.device,
    *,
    unsafe_allow_pickle: bool = False,
) -> RunInputs:
    """The :class:`RunInputs` certify ran on, reloaded from the report's records (the files'
    hashes are checked by :func:`check_input_files` first)."""
    inputs = report["inputs"]
    heldout = unlabeled = init = None
    if "heldout" in inputs:
        heldout = load_recorded_dataset(inputs["heldout"], root)
    if "unlabeled" in inputs:
        unlabeled = load_recorded_features(inputs["unlabeled"], root)
    if "init" in inputs:
        init = resolve(inputs["init"]["path"], root)
    checkpoint = None
    if "model" in inputs:
        checkpoint = load_recorded_model(
            report, root, device, unsafe_allow_pickle=unsafe_allow_pickle
        )
    return RunInputs(
        checkpoint=checkpoint,
        data=load_recorded_dataset(inputs["data"], root),
        heldout=heldout,
        unlabeled=unlabeled,
        init=init,
        unsafe_allow_pickle=unsafe_allow_pickle,
        device=device,
    )

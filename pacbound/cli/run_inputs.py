"""The inputs of a run (the checkpoint, the data sets), loaded from a command's options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pacbound.certify.method import RunInputs
from pacbound.cli.model_options import (
    data_kwargs,
    resolve_dataset,
    resolve_features,
    resolve_model,
)
from pacbound.cli.preflight import check_disjoint_inputs, check_same_input_shape
from pacbound.cli.terminal import Terminal


def load_run_inputs(kw: dict[str, Any], term: Terminal) -> tuple[RunInputs, dict[str, Any]]:
    """The checkpoint and the data sets of a command's parsed parameters, loaded and checked
    against each other (a command without ``--heldout``/``--unlabeled`` has none), and their
    records for the report's ``inputs``."""
    from pacbound.io import check_model_data, resolve_device

    device = resolve_device(kw["device"])
    loaded = resolve_model(
        kw["checkpoint"],
        arch=kw["arch"],
        arch_kwargs=kw["arch_kwargs"],
        unsafe_allow_pickle=kw["unsafe_allow_pickle"],
        device=kw["device"],
        terminal=term,
        strip_prefix=kw["strip_prefix"],
    )
    data_kw = data_kwargs(kw)
    data = resolve_dataset(kw["data"], split=kw["split"], **data_kw)
    check_model_data(loaded, data, device=device)
    records: dict[str, Any] = {"model": loaded.to_dict(), "data": data.provenance.to_dict()}
    heldout = unlabeled = None
    if kw.get("heldout") is not None:
        heldout = resolve_dataset(kw["heldout"], split=kw["heldout_split"], **data_kw)
        check_disjoint_inputs(data.provenance, heldout.provenance, "--heldout")
        check_model_data(loaded, heldout, device=device)
        records["heldout"] = heldout.provenance.to_dict()
    if kw.get("unlabeled") is not None:
        unlabeled = resolve_features(kw["unlabeled"], split=kw["unlabeled_split"], **data_kw)
        check_disjoint_inputs(data.provenance, unlabeled.provenance, "--unlabeled")
        check_same_input_shape(unlabeled, data, "--unlabeled")
        records["unlabeled"] = unlabeled.provenance.to_dict()
    inputs = RunInputs(
        loaded=loaded,
        data=data,
        heldout=heldout,
        unlabeled=unlabeled,
        init=None if kw["init"] is None else Path(kw["init"]),
        unsafe_allow_pickle=kw["unsafe_allow_pickle"],
        device=device,
    )
    return inputs, records

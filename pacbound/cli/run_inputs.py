"""The inputs of a run (the checkpoint if any, the data sets), loaded from a command's options."""

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
    """The checkpoint (when given: a method that needs none, ``marginal``, may run without)
    and the data sets of a command's parsed parameters, loaded and checked against each other
    (a command without ``--heldout``/``--unlabeled`` has none), and their records for the
    report's ``inputs``."""
    from pacbound.io import check_model_data, resolve_device

    device = resolve_device(kw["device"])
    loaded = None
    if kw.get("checkpoint") is not None:
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
    records: dict[str, Any] = {"data": data.provenance.to_dict()}
    if loaded is not None:
        check_model_data(loaded, data, device=device)
        records = {"model": loaded.to_dict(), **records}
    heldout = unlabeled = None
    if kw.get("heldout") is not None:
        heldout = resolve_dataset(kw["heldout"], split=kw["heldout_split"], **data_kw)
        check_disjoint_inputs(data.provenance, heldout.provenance, "--heldout")
        if loaded is not None:
            check_model_data(loaded, heldout, device=device)
        else:
            check_same_input_shape(heldout, data, "--heldout")
        records["heldout"] = heldout.provenance.to_dict()
    if kw.get("unlabeled") is not None:
        unlabeled = resolve_features(kw["unlabeled"], split=kw["unlabeled_split"], **data_kw)
        check_disjoint_inputs(data.provenance, unlabeled.provenance, "--unlabeled")
        check_same_input_shape(unlabeled, data, "--unlabeled")
        records["unlabeled"] = unlabeled.provenance.to_dict()
    inputs = RunInputs(
        checkpoint=loaded,
        data=data,
        heldout=heldout,
        unlabeled=unlabeled,
        init=None if kw.get("init") is None else Path(kw["init"]),
        unsafe_allow_pickle=kw["unsafe_allow_pickle"],
        device=device,
    )
    return inputs, records

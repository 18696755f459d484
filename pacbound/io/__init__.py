"""Everything a user can point pacbound at: checkpoints, architectures and data sets.

Offline only, safe by default (no unpickling of code unless asked), strict matching, and a
provenance record (paths, SHA-256, transformations) for every loaded object.
"""

from __future__ import annotations

from pacbound.io.architectures import ArchitectureSpec, parse_arch, parse_arch_kwargs
from pacbound.io.checkpoints import Checkpoint, CheckpointFormat, read_checkpoint
from pacbound.io.datasets import (
    Dataset,
    Features,
    load_dataset,
    load_features,
    recorded_load_options,
)
from pacbound.io.device import resolve_device
from pacbound.io.dry_run import DryRun, check_model_data
from pacbound.io.inspection import CheckpointReport, inspect_checkpoint
from pacbound.io.models import (
    LoadedModel,
    TensorInfo,
    TensorKind,
    load_init_state,
    load_model,
    refuse_trained_init,
)
from pacbound.io.provenance import (
    CheckpointProvenance,
    DatasetProvenance,
    FileRecord,
    ModelProvenance,
    sha256_file,
)
from pacbound.io.readers import DataFormat, Split, data_format
from pacbound.io.transforms import (
    LabelMap,
    Normalization,
    parse_input_shape,
    parse_label_map,
    parse_normalization,
)

__all__ = [
    "ArchitectureSpec",
    "Checkpoint",
    "CheckpointFormat",
    "CheckpointProvenance",
    "CheckpointReport",
    "DataFormat",
    "Dataset",
    "DatasetProvenance",
    "DryRun",
    "Features",
    "FileRecord",
    "LabelMap",
    "LoadedModel",
    "ModelProvenance",
    "Normalization",
    "Split",
    "TensorInfo",
    "TensorKind",
    "check_model_data",
    "data_format",
    "inspect_checkpoint",
    "load_dataset",
    "load_features",
    "load_init_state",
    "load_model",
    "parse_arch",
    "parse_arch_kwargs",
    "parse_input_shape",
    "parse_label_map",
    "parse_normalization",
    "read_checkpoint",
    "recorded_load_options",
    "refuse_trained_init",
    "resolve_device",
    "sha256_file",
]

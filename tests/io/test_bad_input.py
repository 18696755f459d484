"""The catalogue of things users really do wrong, each ending in exit 3 and one clear line.

Every case builds its own files in tmp_path and runs through the real CLI group (so the exit
code and the one-line ``Error:`` come from ``pacbound.cli.main``): checkpoint cases through
``pacbound inspect``, data cases through a small ``check`` command assembled here from the
shared ``model_options``/``data_options`` decorators and resolvers, as later commands are.
Each must name the culprit and the fix, print no traceback, and write no file.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pacbound.cli.main import PacboundGroup, cli
from pacbound.cli.model_options import (
    data_kwargs,
    data_options,
    model_options,
    resolve_dataset,
    resolve_init,
    resolve_model,
)
from pacbound.cli.terminal import Terminal
from pacbound.errors import EXIT_BAD_INPUT
from pacbound.io import check_model_data
from tests.io.conftest import save_safetensors, small_mlp, write_idx, write_idx_folder, write_npz

KW = '{"in_features": 16, "hidden": [8], "num_classes": 3}'
DATA_OPTIONS = (
    "--data",
    "--label-",
    "--normalize",
    "--x-key",
    "--y-key",
    "--csv-",
    "--input-shape",
)
MARKER = "pwned.marker"


@click.group(cls=PacboundGroup)
def harness() -> None:
    """A stand-in for later commands that take a model and a data set."""


@harness.command("check")
@click.argument("checkpoint")
@model_options
@data_options
def check(checkpoint: str, **opts: Any) -> None:
    model = resolve_model(
        checkpoint,
        arch=opts["arch"],
        arch_kwargs=opts["arch_kwargs"],
        unsafe_allow_pickle=opts["unsafe_allow_pickle"],
        device=opts["device"],
        terminal=Terminal(),
    )
    resolve_init(opts["init"], model, unsafe_allow_pickle=opts["unsafe_allow_pickle"])
    data = resolve_dataset(opts["data"], split=opts["split"], **data_kwargs(opts))
    check_model_data(model, data)
    click.echo("ok")


class Evil:
    """Unpickling this would create the marker file: the payload that must never run."""

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, ...]]:
        return (os.system, (f"touch {MARKER}",))


def model(tmp: Path, num_classes: int = 3) -> str:
    return str(save_safetensors(tmp / "model.safetensors", small_mlp(num_classes)))


def data_npz(tmp: Path, x: np.ndarray | None = None, y: np.ndarray | None = None) -> str:
    x = np.random.default_rng(0).random((6, 16)) if x is None else x
    y = np.array([0, 1, 2, 0, 1, 2]) if y is None else y
    return str(write_npz(tmp / "data.npz", x, y))


def run_check(
    tmp: Path, *extra: str, data: str | None = None, ckpt: str | None = None
) -> list[str]:
    return [
        "check",
        ckpt or model(tmp),
        "--arch",
        "mlp",
        "--arch-kwargs",
        KW,
        "--data",
        data or data_npz(tmp),
        *extra,
    ]


# --- checkpoint builders: each returns the `pacbound inspect …` arguments ---------------------


def truncated_safetensors(tmp: Path) -> list[str]:
    path = Path(model(tmp))
    path.write_bytes(path.read_bytes()[:-40])
    return ["inspect", str(path)]


def text_named_safetensors(tmp: Path) -> list[str]:
    path = tmp / "weights.safetensors"
    path.write_text("these are my weights, trust me\n" * 3)
    return ["inspect", str(path)]


def empty_safetensors(tmp: Path) -> list[str]:
    path = tmp / "empty.safetensors"
    path.write_bytes(b"")
    return ["inspect", str(path)]


def corrupt_safetensors_header(tmp: Path) -> list[str]:
    path = Path(model(tmp))
    data = bytearray(path.read_bytes())
    data[8:20] = b"\x00" * 12
    path.write_bytes(bytes(data))
    return ["inspect", str(path)]


def wrong_architecture(tmp: Path) -> list[str]:
    return ["inspect", model(tmp), "--arch", "lenet5"]


def missing_tensors(tmp: Path) -> list[str]:
    state = small_mlp().state_dict()
    del state["3.bias"]
    path = save_safetensors(tmp / "partial.safetensors", state)
    return ["inspect", str(path), "--arch", "mlp", "--arch-kwargs", KW]


def wrong_shapes(tmp: Path) -> list[str]:
    return ["inspect", model(tmp), "--arch", "mlp", "--arch-kwargs", '{"in_features": 16}']


def nan_weights(tmp: Path) -> list[str]:
    state = small_mlp().state_dict()
    state["3.weight"][1, 2] = float("nan")
    return ["inspect", str(save_safetensors(tmp / "nan.safetensors", state))]


def inf_weights_pt(tmp: Path) -> list[str]:
    state = small_mlp().state_dict()
    state["1.bias"][0] = float("inf")
    torch.save(state, tmp / "inf.pt")
    return ["inspect", str(tmp / "inf.pt")]


def code_executing_pickle(tmp: Path) -> list[str]:
    path = tmp / "evil.pt"
    torch.save({"state_dict": small_mlp().state_dict(), "hook": Evil()}, path)
    return ["inspect", str(path), "--arch", "mlp", "--arch-kwargs", KW]


def raw_pickle_named_pt(tmp: Path) -> list[str]:
    path = tmp / "raw.pth"
    path.write_bytes(pickle.dumps(Evil()))
    return ["inspect", str(path)]


def junk_pt(tmp: Path) -> list[str]:
    path = tmp / "junk.pt"
    path.write_text("not a checkpoint")
    return ["inspect", str(path)]


def truncated_pt(tmp: Path) -> list[str]:
    path = tmp / "cut.pt"
    torch.save(small_mlp().state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])
    return ["inspect", str(path)]


def pt_without_state_dict(tmp: Path) -> list[str]:
    path = tmp / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    return ["inspect", str(path)]


def incompatible_dtype(tmp: Path) -> list[str]:
    state = small_mlp().state_dict()
    state["1.weight"] = state["1.weight"].to(torch.int32)
    path = save_safetensors(tmp / "int.safetensors", state)
    return ["inspect", str(path), "--arch", "mlp", "--arch-kwargs", KW]


def directory_as_checkpoint(tmp: Path) -> list[str]:
    (tmp / "ckpt.safetensors").mkdir()
    return ["inspect", str(tmp / "ckpt.safetensors")]


def missing_checkpoint(tmp: Path) -> list[str]:
    return ["inspect", str(tmp / "nope.safetensors")]


def unreadable_checkpoint(tmp: Path) -> list[str]:
    path = Path(model(tmp))
    path.chmod(0)
    return ["inspect", str(path)]


def unknown_suffix(tmp: Path) -> list[str]:
    path = tmp / "model.h5"
    path.write_bytes(b"\x89HDF")
    return ["inspect", str(path)]


def arch_missing_module(tmp: Path) -> list[str]:
    return ["inspect", model(tmp), "--arch", "no_such_pkg_xyz.nets:build"]


def arch_missing_attribute(tmp: Path) -> list[str]:
    (tmp / "catalogue_nets_a.py").write_text("def build_model(**kw):\n    return None\n")
    return ["inspect", model(tmp), "--arch", "catalogue_nets_a:build_modle"]


def arch_factory_raises(tmp: Path) -> list[str]:
    (tmp / "catalogue_nets_b.py").write_text(
        "def build(**kw):\n    raise RuntimeError('width must be even')\n"
    )
    return ["inspect", model(tmp), "--arch", "catalogue_nets_b:build"]


def arch_returns_non_module(tmp: Path) -> list[str]:
    (tmp / "catalogue_nets_c.py").write_text("def build(**kw):\n    return {'layers': 3}\n")
    return ["inspect", model(tmp), "--arch", "catalogue_nets_c:build"]


def arch_module_import_fails(tmp: Path) -> list[str]:
    (tmp / "catalogue_nets_d.py").write_text("import not_installed_dep_xyz\n")
    return ["inspect", model(tmp), "--arch", "catalogue_nets_d:build"]


def arch_unknown_builtin(tmp: Path) -> list[str]:
    return ["inspect", model(tmp), "--arch", "resnet18"]


def arch_kwargs_invalid_json(tmp: Path) -> list[str]:
    return ["inspect", model(tmp), "--arch", "mlp", "--arch-kwargs", "{hidden: [600]}"]


def arch_kwargs_not_object(tmp: Path) -> list[str]:
    return ["inspect", model(tmp), "--arch", "mlp", "--arch-kwargs", "[600, 600]"]


def arch_kwargs_unknown_kwarg(tmp: Path) -> list[str]:
    return ["inspect", model(tmp), "--arch", "mlp", "--arch-kwargs", '{"widht": 600}']


# --- data builders: each returns `check …` arguments for the harness group -------------------


def empty_dataset(tmp: Path) -> list[str]:
    return run_check(tmp, data=data_npz(tmp, np.zeros((0, 16)), np.zeros(0, dtype=np.int64)))


def labels_out_of_range(tmp: Path) -> list[str]:
    return run_check(tmp, data=data_npz(tmp, y=np.array([0, 1, 2, 3, 1, 0])))


def negative_labels(tmp: Path) -> list[str]:
    return run_check(tmp, data=data_npz(tmp, y=np.array([0, 1, -1, 0, 1, 0])))


def fractional_labels(tmp: Path) -> list[str]:
    return run_check(tmp, data=data_npz(tmp, y=np.array([0, 1, 0.5, 0, 1, 0])))


def nan_features(tmp: Path) -> list[str]:
    x = np.random.default_rng(0).random((6, 16))
    x[4, 7] = np.nan
    return run_check(tmp, data=data_npz(tmp, x=x))


def csv_non_numeric(tmp: Path) -> list[str]:
    path = tmp / "data.csv"
    rows = ["f0,colour,label"] + [f"0.{i},red,{i % 3}" for i in range(4)]
    path.write_text("\n".join(rows) + "\n")
    return run_check(tmp, data=str(path))


def csv_missing_label_column(tmp: Path) -> list[str]:
    path = tmp / "data.csv"
    path.write_text("a,b,c\n1,2,0\n")
    return run_check(tmp, "--label-column", "target", data=str(path))


def npz_object_array(tmp: Path) -> list[str]:
    x = np.empty(2, dtype=object)
    x[0], x[1] = [1, 2], "a"
    return run_check(tmp, data=data_npz(tmp, x=x, y=np.array([0, 1])))


def npz_missing_y(tmp: Path) -> list[str]:
    path = tmp / "data.npz"
    with open(path, "wb") as handle:
        np.savez(handle, x=np.zeros((2, 16)), labels=np.zeros(2))
    return run_check(tmp, data=str(path))


def npz_wrong_x_key(tmp: Path) -> list[str]:
    path = tmp / "data.npz"
    with open(path, "wb") as handle:
        np.savez(handle, **{f"k{i}": np.zeros(2) for i in range(12)})
    return run_check(tmp, "--x-key", "images", data=str(path))


def csv_semicolons(tmp: Path) -> list[str]:
    path = tmp / "data.csv"
    header = ";".join(f"f{i}" for i in range(30)) + ";label"
    rows = [";".join(["0.0"] * 30 + [str(i % 3)]) for i in range(6)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return run_check(tmp, data=str(path))


def csv_long_field(tmp: Path) -> list[str]:
    path = tmp / "data.csv"
    path.write_text("a,note,label\n0.5," + "x" * 900 + ",1\n")
    return run_check(tmp, data=str(path))


def csv_tabs(tmp: Path) -> list[str]:
    path = tmp / "data.csv"
    path.write_text("a\tb\tlabel\n3,5\t1\n")
    return run_check(tmp, data=str(path))


def csv_bad_delimiter(tmp: Path) -> list[str]:
    path = tmp / "data.csv"
    path.write_text("a;label\n1;0\n")
    return run_check(tmp, "--csv-delimiter", ";;", data=str(path))


def input_shape_wrong_size(tmp: Path) -> list[str]:
    return run_check(tmp, "--input-shape", "1,4,5")


def input_shape_syntax(tmp: Path) -> list[str]:
    return run_check(tmp, "--input-shape", "1,-4,4")


def float_images_need_input_shape(tmp: Path) -> list[str]:
    from pacbound.models import lenet5

    torch.manual_seed(0)
    ckpt = str(save_safetensors(tmp / "lenet.safetensors", lenet5(num_classes=3)))
    data = data_npz(tmp, x=np.random.default_rng(0).random((6, 28, 28)).astype(np.float32))
    args = run_check(tmp, data=data, ckpt=ckpt)
    at = args.index("--arch")
    args[at + 1 : at + 4] = ["lenet5", "--arch-kwargs", '{"num_classes": 3}']
    return args


def idx_bad_magic(tmp: Path) -> list[str]:
    folder = write_idx_folder(tmp / "mnist")
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((12, 4, 4)), magic=0x12345678)
    return run_check(tmp, data=str(folder))


def idx_swapped_files(tmp: Path) -> list[str]:
    folder = write_idx_folder(tmp / "mnist")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros((12, 4, 4)))
    return run_check(tmp, data=str(folder))


def idx_count_mismatch(tmp: Path) -> list[str]:
    folder = write_idx_folder(tmp / "mnist")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(11))
    return run_check(tmp, data=str(folder))


def idx_truncated(tmp: Path) -> list[str]:
    folder = write_idx_folder(tmp / "mnist", gz=False)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    return run_check(tmp, data=str(folder))


def idx_corrupt_gzip(tmp: Path) -> list[str]:
    folder = write_idx_folder(tmp / "mnist")
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    return run_check(tmp, data=str(folder))


def folder_without_idx(tmp: Path) -> list[str]:
    (tmp / "photos").mkdir()
    (tmp / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    return run_check(tmp, data=str(tmp / "photos"))


def data_shape_mismatch(tmp: Path) -> list[str]:
    return run_check(tmp, data=data_npz(tmp, x=np.zeros((6, 1, 5, 5))))


def label_map_uncovered(tmp: Path) -> list[str]:
    return run_check(tmp, "--label-map", "0:0,1:1", data=data_npz(tmp))


def label_map_syntax(tmp: Path) -> list[str]:
    return run_check(tmp, "--label-map", "0..4->0")


def normalize_syntax(tmp: Path) -> list[str]:
    return run_check(tmp, "--normalize", "imagenet")


def init_mismatch(tmp: Path) -> list[str]:
    init = save_safetensors(tmp / "init.safetensors", small_mlp(num_classes=4))
    return run_check(tmp, "--init", str(init))


def init_is_a_directory(tmp: Path) -> list[str]:
    (tmp / "init").mkdir()
    return run_check(tmp, "--init", str(tmp / "init"))


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], list[str]]
    match: str  # a regex the one Error: line must match (culprit and fix)


CASES = {
    "truncated safetensors": Case(
        truncated_safetensors, r"model\.safetensors is not a valid safetensors file .*re-save"
    ),
    "text file named .safetensors": Case(
        text_named_safetensors,
        r"weights\.safetensors is not a valid safetensors file \(.*header too large",
    ),
    "empty .safetensors": Case(empty_safetensors, r"empty\.safetensors is not a valid safetensors"),
    "corrupt safetensors header": Case(
        corrupt_safetensors_header, r"model\.safetensors is not a valid safetensors"
    ),
    "wrong architecture": Case(
        wrong_architecture,
        r"model\.safetensors does not match the model: missing: 0\.weight.*Check --arch",
    ),
    "missing tensors": Case(
        missing_tensors,
        r"partial\.safetensors does not match the model: missing: 3\.bias\. Check --arch",
    ),
    "wrong shapes": Case(
        wrong_shapes,
        r"wrong shape: 1\.weight \(file \[8, 16\], model \[600, 16\]\); 1\.bias .*3\.weight",
    ),
    "NaN weights": Case(
        nan_weights,
        r"nan\.safetensors: tensor '3\.weight' has 1 NaN/Inf value\(s\).*earlier checkpoint",
    ),
    "Inf weights in .pt": Case(inf_weights_pt, r"inf\.pt: tensor '1\.bias' has 1 NaN/Inf"),
    "pickle that would execute code": Case(
        code_executing_pickle, r"evil\.pt holds Python objects .*--unsafe-allow-pickle"
    ),
    "raw pickle named .pth": Case(
        raw_pickle_named_pt, r"raw\.pth (holds Python objects|is not a readable PyTorch checkpoint)"
    ),
    "junk bytes named .pt": Case(
        junk_pt, r"junk\.pt is not a readable PyTorch checkpoint .*save it again"
    ),
    "truncated .pt": Case(truncated_pt, r"cut\.pt is not a readable PyTorch checkpoint"),
    ".pt without a state dict": Case(
        pt_without_state_dict, r"meta\.pt holds a dict without a state dict .*'epoch', 'lr'"
    ),
    "integer tensor for a float parameter": Case(
        incompatible_dtype,
        r"incompatible dtype: 1\.weight \(file torch\.int32, model torch\.float32\)",
    ),
    "directory where a file was expected": Case(
        directory_as_checkpoint, r"ckpt\.safetensors is a directory, but a file was expected"
    ),
    "missing checkpoint file": Case(
        missing_checkpoint, r"nope\.safetensors does not exist; check the path"
    ),
    "unreadable checkpoint": Case(
        unreadable_checkpoint,
        r"model\.safetensors is not readable \(permission denied\); fix its permissions",
    ),
    "unknown checkpoint suffix": Case(
        unknown_suffix, r"model\.h5 .*suffix '\.h5'; use \.safetensors"
    ),
    "--arch missing module": Case(
        arch_missing_module,
        r"--arch no_such_pkg_xyz\.nets:build: no module named 'no_such_pkg_xyz'.*PYTHONPATH",
    ),
    "--arch missing attribute": Case(
        arch_missing_attribute,
        r"catalogue_nets_a has no attribute 'build_modle' \(did you mean build_model\?\)",
    ),
    "--arch factory raises": Case(
        arch_factory_raises,
        r"catalogue_nets_b:build: the factory raised RuntimeError: width must be even",
    ),
    "--arch factory returns a dict": Case(
        arch_returns_non_module, r"catalogue_nets_c:build returned a dict, not a torch\.nn\.Module"
    ),
    "--arch module needs a missing dependency": Case(
        arch_module_import_fails, r"needs 'not_installed_dep_xyz', which is not installed"
    ),
    "--arch unknown built-in": Case(
        arch_unknown_builtin,
        r"--arch 'resnet18' is neither a built-in \(mlp, lenet5, convnet, resnet, transformer\)",
    ),
    "--arch-kwargs invalid JSON": Case(
        arch_kwargs_invalid_json, r"--arch-kwargs is not valid JSON \(Expecting property name"
    ),
    "--arch-kwargs not an object": Case(
        arch_kwargs_not_object, r"--arch-kwargs must be a JSON object .*got list"
    ),
    "--arch-kwargs unknown keyword": Case(
        arch_kwargs_unknown_kwarg, r"--arch mlp rejected --arch-kwargs \{\"widht\": 600\}"
    ),
    "empty data set": Case(empty_dataset, r"data\.npz has no examples"),
    "labels out of range": Case(
        labels_out_of_range, r"data\.npz: label 3 is outside \[0, 3\) for a model with 3 outputs"
    ),
    "negative labels": Case(negative_labels, r"data\.npz: label -1 is negative"),
    "fractional labels": Case(fractional_labels, r"data\.npz: labels must be whole numbers"),
    "NaN features": Case(nan_features, r"data\.npz: example 4 has NaN/Inf features \(1 example"),
    "CSV with a non-numeric column": Case(
        csv_non_numeric, r"data\.csv line 2, column 'colour' holds 'red', not a number"
    ),
    "CSV label column missing": Case(
        csv_missing_label_column,
        r"--label-column 'target' is not a column of .*data\.csv \(columns: a, b, c\)",
    ),
    "npz with object arrays": Case(
        npz_object_array, r"data\.npz holds object arrays, which would need pickle"
    ),
    "npz without y": Case(
        npz_missing_y,
        r"data\.npz has no array for --y-key 'y' \(it has 'x', 'labels'\); name the arrays with "
        "--x-key and --y-key",
    ),
    "npz --x-key names no array": Case(
        npz_wrong_x_key,
        r"data\.npz has no array for --x-key 'images' or --y-key 'y' \(it has 'k0', 'k1', "
        r".*'k7', … \(12 in all\)\)",
    ),
    "semicolon CSV read with commas": Case(
        csv_semicolons,
        r"data\.csv line 2, column 'f0;f1;f2;.*…' holds '0\.0;.*…', not a number; looks like "
        r"';'-separated: pass --csv-delimiter ';'$",
    ),
    "CSV field too long to quote": Case(
        csv_long_field, r"column 'note' holds 'xxxxxxxx\w*…', not a number; encode categories"
    ),
    "CSV row of another width, tab-separated": Case(
        csv_tabs,
        r"line 2 has 2 fields, expected 1; .*looks like 'tab'-separated: pass "
        "--csv-delimiter 'tab'",
    ),
    "--csv-delimiter of two characters": Case(
        csv_bad_delimiter, r"--csv-delimiter ';;': give one separator character"
    ),
    "--input-shape of another size": Case(
        input_shape_wrong_size,
        r"--input-shape 1,4,5 holds 20 values per example, but --data .*data\.npz has 16 "
        r"\(stored shape 16\); give dimensions whose product is 16",
    ),
    "--input-shape syntax": Case(
        input_shape_syntax, r"--input-shape '1,-4,4': write the shape of one example"
    ),
    "3-D float images without --input-shape": Case(
        float_images_need_input_shape,
        r"a batch of shape \[6, 28, 28\] failed .*or pass --input-shape 1,28,28 for "
        "one-channel images",
    ),
    "IDX bad magic number": Case(
        idx_bad_magic,
        r"train-images-idx3-ubyte\.gz has IDX magic number 0x12345678, expected 0x00000803",
    ),
    "IDX images and labels swapped": Case(
        idx_swapped_files, r"train-labels-idx1-ubyte\.gz has IDX magic number 0x00000803 .*swapped"
    ),
    "IDX image/label count mismatch": Case(
        idx_count_mismatch, r"has 12 images but train-labels-idx1-ubyte\.gz has 11 labels"
    ),
    "IDX truncated": Case(
        idx_truncated,
        r"train-images-idx3-ubyte is truncated or corrupt \(header says 192 data bytes",
    ),
    "IDX corrupt gzip": Case(
        idx_corrupt_gzip, r"train-images-idx3-ubyte\.gz is not a valid gzip file"
    ),
    "folder without IDX files": Case(
        folder_without_idx, r"photos: no train images file \(train-images-idx3-ubyte\[\.gz\]\)"
    ),
    "model/data shape mismatch": Case(
        data_shape_mismatch,
        r"cannot process --data .*data\.npz: a batch of shape \[6, 1, 5, 5\] failed .*in_features",
    ),
    "label map misses labels": Case(
        label_map_uncovered, r"--label-map '0:0,1:1' does not cover label\(s\) 2"
    ),
    "label map syntax": Case(
        label_map_syntax, r"--label-map: cannot read '0\.\.4->0'.*e\.g\. 0-4:0,5-9:1"
    ),
    "normalize syntax": Case(normalize_syntax, r"--normalize 'imagenet': write MEAN,STD"),
    "--init from another architecture": Case(
        init_mismatch,
        r"--init .*init\.safetensors does not match the model: wrong shape: 3\.weight",
    ),
    "--init is a directory": Case(init_is_a_directory, r"--init: .*init is a directory"),
}


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = case.build(tmp_path)
    if case.build is unreadable_checkpoint and os.geteuid() == 0:
        # root reads anything: make the permission check see what a normal user would
        real_access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda p, mode: False if str(p).endswith("model.safetensors") else real_access(p, mode),
        )
    before = _files(tmp_path)
    group = harness if args[0] == "check" else cli
    result = CliRunner().invoke(group, args)
    assert result.exit_code == EXIT_BAD_INPUT, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    import re

    assert re.search(case.match, errors[0]), errors[0]
    if any(option in errors[0] for option in DATA_OPTIONS):  # data errors stay short
        assert len(errors[0]) - len(str(tmp_path)) <= 360, errors[0]
    assert _files(tmp_path) == before, "a file was written"
    assert not (tmp_path / MARKER).exists(), "the pickle payload ran"


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25


def test_harness_accepts_good_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(harness, run_check(tmp_path, "--device", "cpu"))
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok\n"


def test_unsafe_flag_runs_the_payload_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control experiment: the same file with the flag does unpickle (and warns)."""
    monkeypatch.chdir(tmp_path)
    args = code_executing_pickle(tmp_path)
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == EXIT_BAD_INPUT
    assert not (tmp_path / MARKER).exists()
    allowed = CliRunner().invoke(cli, [*args, "--unsafe-allow-pickle", "--json"])
    assert allowed.exit_code == 0, allowed.output
    assert "Warning:" in allowed.stderr and "--unsafe-allow-pickle" in allowed.stderr
    assert (tmp_path / MARKER).exists()  # proves the payload is real, so its absence above counts


@pytest.mark.parametrize(
    ("extra", "data_kind", "message"),
    [
        (
            ("--x-key", "feats"),
            "csv",
            "--x-key applies to .npz or .safetensors files only; the "
            "data given are csv: drop --x-key",
        ),
        (("--csv-delimiter", ";"), "npz", "--csv-delimiter applies to .csv files only"),
        (("--label-column", "y"), "npz", "--label-column applies to .csv files only"),
    ],
)
def test_format_options_that_fit_no_data_input_are_usage_errors(
    tmp_path: Path, extra: tuple[str, str], data_kind: str, message: str
) -> None:
    """Once silently ignored; now exit 2 with one line naming the option."""
    if data_kind == "csv":
        data = tmp_path / "data.csv"
        data.write_text("\n".join(",".join(["0.5"] * 16 + [str(i % 3)]) for i in range(4)) + "\n")
    else:
        data = Path(data_npz(tmp_path))
    result = CliRunner().invoke(harness, run_check(tmp_path, *extra, data=str(data)))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    ok = CliRunner().invoke(harness, run_check(tmp_path, data=str(data)))
    assert ok.exit_code == 0, ok.output

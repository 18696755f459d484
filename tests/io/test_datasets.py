"""Data sets from IDX folders, .npz, .safetensors and .csv, with their transforms and provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pacbound.errors import InvalidInputError
from pacbound.io import load_dataset, parse_label_map, parse_normalization
from tests.io.conftest import write_idx_folder, write_npz


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_train_and_test(tmp_path: Path, gz: bool) -> None:
    folder = write_idx_folder(tmp_path / "idx", n=12, gz=gz)
    train = load_dataset(folder)
    test = load_dataset(folder, split="test")
    assert train.x.shape == (12, 1, 4, 4) and train.x.dtype == torch.float32
    assert test.n == 6
    assert train.y.tolist() == [i % 10 for i in range(12)]
    assert train.y.dtype == torch.int64
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert train.num_classes == 10
    prov = train.provenance.to_dict()
    ext = ".gz" if gz else ""
    assert [Path(f["path"]).name for f in prov["files"]] == [
        f"train-images-idx3-ubyte{ext}",
        f"train-labels-idx1-ubyte{ext}",
    ]
    for record in prov["files"]:
        assert record["sha256"] == hashlib.sha256(Path(record["path"]).read_bytes()).hexdigest()
    assert prov["format"] == "idx" and prov["split"] == "train" and prov["scaled_to_unit"]


def test_npz_uint8_images_are_scaled_exactly(tmp_path: Path) -> None:
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8).repeat(3, axis=0)
    path = write_npz(tmp_path / "d.npz", x, np.array([0, 1, 2]))
    data = load_dataset(path)
    assert data.x.shape == (3, 1, 2, 2)
    expected = torch.tensor([[0.0, 1.0], [0.2, 0.4]], dtype=torch.float32)  # k/255 in float32
    assert torch.equal(data.x[0, 0], expected)
    assert data.provenance.format == "npz"


def test_npz_float_features_are_kept_and_integral_float_labels_accepted(tmp_path: Path) -> None:
    x = np.linspace(-3.0, 3.0, 12).reshape(4, 3)
    path = write_npz(tmp_path / "d.npz", x, np.array([0.0, 1.0, 1.0, 0.0]))
    data = load_dataset(path)
    assert torch.allclose(data.x, torch.from_numpy(x).float())
    assert data.y.tolist() == [0, 1, 1, 0]
    assert not data.provenance.scaled_to_unit


def test_safetensors_data_set(tmp_path: Path) -> None:
    x = torch.rand(5, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 4])
    path = tmp_path / "d.safetensors"
    save_file({"x": x, "y": y}, str(path))
    data = load_dataset(path, normalize="0.5/0.5/0.5,0.25/0.25/0.25")
    assert torch.allclose(data.x, (x - 0.5) / 0.25)
    assert data.num_classes == 5
    assert data.provenance.normalization == "mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]"


def test_csv_with_header_named_and_indexed_label_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,label,b\n1.5,0,2\n-1,2,3e1\n0,1,0\n")
    default = load_dataset(path)
    assert default.y.tolist() == [0, 2, 1]
    assert default.x.tolist() == [[1.5, 2.0], [-1.0, 30.0], [0.0, 0.0]]
    assert default.provenance.label_column == "label"
    by_index = load_dataset(path, label_column=2)
    assert by_index.y.tolist() == [2, 30, 0]
    assert by_index.provenance.label_column == "b"
    by_text_index = load_dataset(path, label_column="-1")
    assert by_text_index.y.tolist() == [2, 30, 0]


def test_csv_without_header_uses_last_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("0.1,0.2,1\n0.3,0.4,0\n")
    data = load_dataset(path)
    assert data.y.tolist() == [1, 0]
    assert data.x.shape == (2, 2)
    assert data.provenance.label_column == "2"


def test_label_map_and_subset_are_recorded(tmp_path: Path) -> None:
    folder = write_idx_folder(tmp_path / "idx", n=20)
    data = load_dataset(folder, label_map="0-4:0,5-9:1", subset=[3, 7, 11, 19])
    assert data.y.tolist() == [0, 1, 0, 1]  # digits 3, 7, 1, 9
    assert data.num_classes == 2
    prov = data.provenance.to_dict()
    assert prov["subset_indices"] == [3, 7, 11, 19]
    assert prov["n"] == 4
    assert prov["label_map"] == "0-4:0,5-9:1"
    first = load_dataset(folder, subset=5)
    assert first.provenance.subset_indices == (0, 1, 2, 3, 4)
    full = load_dataset(folder)
    assert torch.equal(first.x, full.x[:5])


def test_label_map_parsing() -> None:
    m = parse_label_map("3:0, 8:1")
    assert m.pairs == ((3, 0), (8, 1))
    assert m.apply(torch.tensor([8, 3, 3]), source="s").tolist() == [1, 0, 0]
    with pytest.raises(InvalidInputError, match=r"does not cover label\(s\) 5 found in s"):
        m.apply(torch.tensor([3, 5]), source="s")
    with pytest.raises(InvalidInputError, match="label 4 is mapped twice"):
        parse_label_map("0-4:0,4-9:1")
    with pytest.raises(InvalidInputError, match="runs backwards"):
        parse_label_map("9-5:1")


def test_normalization_parsing_and_application() -> None:
    mnist = parse_normalization("MNIST")
    assert (mnist.mean, mnist.std) == ((0.1307,), (0.3081,))
    x = torch.full((2, 1, 2, 2), 0.4388)
    assert torch.allclose(mnist.apply(x.clone(), source="s"), torch.ones_like(x), atol=1e-4)
    with pytest.raises(InvalidInputError, match="standard deviations positive"):
        parse_normalization("0.5,0")
    with pytest.raises(InvalidInputError, match="gives 2 channel values but s has 3 channels"):
        parse_normalization("0/0,1/1").apply(torch.zeros(1, 3, 2, 2), source="s")


@pytest.mark.parametrize(
    ("subset", "match"),
    [
        (0, "subset of 0 examples requested from a data set of 12"),
        ([1, 1], "subset indices repeat"),
        ([12], r"must lie in \[0, 12\)"),
        ([], "the subset is empty"),
    ],
)
def test_bad_subsets(tmp_path: Path, subset: object, match: str) -> None:
    folder = write_idx_folder(tmp_path / "idx", n=12)
    with pytest.raises(InvalidInputError, match=match):
        load_dataset(folder, subset=subset)  # type: ignore[arg-type]


# --- shape and scaling rules, recorded (issue #11) -------------------------------------------


def _save_safetensors(path: Path, **arrays: np.ndarray) -> Path:
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(path))
    return path


@pytest.mark.parametrize(
    ("stored", "dtype", "shape", "reshape"),
    [
        ((5, 6), np.float32, (5, 6), None),
        ((5, 4, 3), np.float32, (5, 4, 3), None),  # was (5, 1, 4, 3) before issue #11
        ((5, 4, 3), np.float64, (5, 4, 3), None),
        ((5, 4, 3), np.uint8, (5, 1, 4, 3), "channel axis added (uint8 N×H×W images)"),
        ((5, 2, 4, 3), np.float32, (5, 2, 4, 3), None),
        ((5, 2, 4, 3), np.uint8, (5, 2, 4, 3), None),
    ],
)
@pytest.mark.parametrize("kind", ["npz", "safetensors", "npy"])
def test_shape_rule_per_format(
    tmp_path: Path,
    kind: str,
    stored: tuple[int, ...],
    dtype: type,
    shape: tuple[int, ...],
    reshape: str | None,
) -> None:
    x = (np.arange(np.prod(stored)) % 200).reshape(stored).astype(dtype)
    y = np.arange(stored[0]) % 2
    if kind == "npz":
        path = write_npz(tmp_path / "d.npz", x, y)
    elif kind == "safetensors":
        path = _save_safetensors(tmp_path / "d.safetensors", x=x, y=y)
    else:
        path = tmp_path / "folder"
        path.mkdir()
        np.save(path / "x.npy", x)
        np.save(path / "y.npy", y)
    data = load_dataset(path)
    assert tuple(data.x.shape) == shape
    prov = data.provenance.to_dict()
    assert prov["stored_shape"] == list(stored[1:]) and prov["input_shape"] == list(shape[1:])
    assert prov["stored_dtype"] == np.dtype(dtype).name and prov["reshape"] == reshape
    uint8 = dtype is np.uint8
    assert prov["scaling"] == ("uint8/255" if uint8 else "none")
    assert prov["scaled_to_unit"] is uint8
    expected = torch.from_numpy(x.astype(np.float32) / (255 if uint8 else 1)).reshape(shape)
    assert torch.allclose(data.x[:], expected)


def test_idx_images_get_a_channel_axis_and_it_is_recorded(tmp_path: Path) -> None:
    prov = load_dataset(write_idx_folder(tmp_path / "idx")).provenance
    assert (prov.stored_shape, prov.input_shape) == ((4, 4), (1, 4, 4))
    assert prov.reshape == "channel axis added (IDX images)" and prov.scaling == "uint8/255"


def test_input_shape_reshapes_every_example(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((3, 12)).astype(np.float32)
    path = tmp_path / "d.csv"
    path.write_text("\n".join(",".join(map(str, row)) + ",1" for row in x.tolist()) + "\n")
    data = load_dataset(path, input_shape="3,2,2")
    assert data.x.shape == (3, 3, 2, 2)
    assert torch.equal(data.x.reshape(3, 12), torch.from_numpy(x))
    assert data.provenance.reshape == "--input-shape"
    assert data.provenance.input_shape == (3, 2, 2) and data.provenance.stored_shape == (12,)
    same = load_dataset(path, input_shape=(12,))
    assert same.provenance.reshape is None and same.x.shape == (3, 12)
    flat = load_dataset(write_idx_folder(tmp_path / "idx"), input_shape=(16,))
    assert flat.x.shape == (12, 16) and flat.provenance.reshape == "--input-shape"


def test_scale_none_keeps_uint8_values(tmp_path: Path) -> None:
    x = np.array([[0, 7, 255]], dtype=np.uint8).repeat(2, axis=0)
    path = write_npz(tmp_path / "d.npz", x, np.array([0, 1]))
    data = load_dataset(path, scale="none")
    assert data.x.tolist() == [[0.0, 7.0, 255.0]] * 2
    assert data.provenance.scaling == "none" and not data.provenance.scaled_to_unit
    assert load_dataset(path).x[0, 1] == np.float32(7) / np.float32(255)
    with pytest.raises(InvalidInputError, match="--scale 'x255': choose auto"):
        load_dataset(path, scale="x255")


def test_array_keys_for_npz_and_safetensors(tmp_path: Path) -> None:
    x, y = np.ones((4, 3), dtype=np.float32), np.array([0, 1, 1, 0])
    npz = tmp_path / "d.npz"
    np.savez(npz, images=x, targets=y, extra=y)
    st = _save_safetensors(tmp_path / "d.safetensors", images=x, targets=y)
    for path in (npz, st):
        data = load_dataset(path, x_key="images", y_key="targets")
        assert data.y.tolist() == [0, 1, 1, 0] and data.x.shape == (4, 3)
        prov = data.provenance.to_dict()
        assert (prov["x_key"], prov["y_key"], prov["csv_delimiter"]) == ("images", "targets", None)
        with pytest.raises(InvalidInputError, match=r"no array for --x-key 'x' or --y-key 'y' \("):
            load_dataset(path)


@pytest.mark.parametrize(("delimiter", "sep"), [(";", ";"), ("tab", "\t"), ("|", "|")])
def test_csv_delimiter(tmp_path: Path, delimiter: str, sep: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(sep.join(["a", "b", "label"]) + "\n" + sep.join(["1.5", "2", "1"]) + "\n")
    data = load_dataset(path, csv_delimiter=delimiter)
    assert data.x.tolist() == [[1.5, 2.0]] and data.y.tolist() == [1]
    assert data.provenance.csv_delimiter == sep and data.provenance.x_key is None


# --- features without labels (--unlabeled) ---------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_features_reads_only_the_features(tmp_path: Path) -> None:
    from pacbound.io import load_features

    x = np.random.default_rng(1).random((5, 4)).astype(np.float32)
    npz = tmp_path / "u.npz"
    np.savez(npz, x=x)  # no labels at all
    st = _save_safetensors(tmp_path / "u.safetensors", inputs=x)
    csv_plain = tmp_path / "u.csv"
    csv_plain.write_text("\n".join(",".join(map(str, r)) for r in x.tolist()) + "\n")
    csv_labeled = tmp_path / "l.csv"
    csv_labeled.write_text(
        "a,b,label,c,d\n" + "\n".join(f"{r[0]},{r[1]},7,{r[2]},{r[3]}" for r in x.tolist()) + "\n"
    )
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    for path, kw in [
        (npz, {}),
        (st, {"x_key": "inputs"}),
        (csv_plain, {}),
        (csv_labeled, {}),
        (folder, {}),
    ]:
        feats = load_features(path, **kw)
        assert torch.allclose(feats.x[:], torch.from_numpy(x)), path
        prov = feats.provenance.to_dict()
        assert prov["num_classes"] is None and prov["n"] == 5 and prov["y_key"] is None
        files = [Path(f["path"]) for f in prov["files"]]
        assert [f["sha256"] for f in prov["files"]] == [_sha(f) for f in files]
    assert load_features(csv_labeled).provenance.label_column == "label"
    assert load_features(csv_plain).provenance.label_column is None
    assert [Path(f.path).name for f in load_features(folder).provenance.files] == ["x.npy"]


def test_load_features_of_an_idx_folder_ignores_the_labels(tmp_path: Path) -> None:
    from pacbound.io import load_features

    folder = write_idx_folder(tmp_path / "idx", gz=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"corrupt")  # never read
    feats = load_features(folder, split="test", subset=[1, 4])
    full = load_dataset(folder, split="train")
    assert feats.x.shape == (2, 1, 4, 4) and full.x.shape == (12, 1, 4, 4)
    assert [Path(f.path).name for f in feats.provenance.files] == ["t10k-images-idx3-ubyte"]
    assert feats.provenance.subset_indices == (1, 4) and feats.provenance.split == "test"
    (folder / "t10k-labels-idx1-ubyte").unlink()
    assert load_features(folder, split="test").n == 6


def test_check_model_data_accepts_features(tmp_path: Path) -> None:
    from pacbound.io import check_model_data, load_features
    from pacbound.models import mlp

    path = tmp_path / "u.npz"
    np.savez(path, x=np.zeros((3, 16), dtype=np.float32))
    run = check_model_data(mlp(in_features=16, hidden=[4], num_classes=3), load_features(path))
    assert run.input_shape == (3, 16) and run.output_shape == (3, 3)


# --- verify repeats the load -----------------------------------------------------------------


def test_recorded_options_repeat_the_load(tmp_path: Path) -> None:
    from pacbound.io import recorded_load_options

    x = np.random.default_rng(2).integers(0, 256, (6, 16), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, pix=x, lab=np.arange(6) % 3)
    first = load_dataset(
        path, x_key="pix", y_key="lab", input_shape="1,4,4", scale="none", subset=[5, 0, 2]
    )
    record = first.provenance.to_dict()
    again = load_dataset(path, **recorded_load_options(record))
    assert torch.equal(again.x, first.x) and torch.equal(again.y, first.y)
    assert again.provenance.to_dict() == record


def test_records_from_before_the_shape_fields_get_the_old_channel_rule(tmp_path: Path) -> None:
    from pacbound.io import recorded_load_options

    path = write_npz(tmp_path / "d.npz", np.zeros((2, 3, 3), np.float32), np.array([0, 1]))
    old = {"path": str(path), "split": None, "label_column": None, "label_map": None}
    old |= {"normalization": None, "subset_indices": None, "scaled_to_unit": False}
    assert load_dataset(path, **recorded_load_options(old)).x.shape == (2, 1, 3, 3)
    assert load_dataset(path).x.shape == (2, 3, 3)


def test_certify_and_verify_repeat_csv_delimiter_and_input_shape(tmp_path: Path) -> None:
    """The format options travel: certify records them, verify REPORT reloads with them, and
    verify ARTIFACT --report refuses a load without them."""
    import json

    from click.testing import CliRunner

    from pacbound.cli.main import cli
    from tests.report._tiny import ARCH_KWARGS, make_task

    task = make_task(tmp_path)
    with np.load(task / "train.npz") as archive:
        x, y = archive["x"], archive["y"]
    csv_path, held_path = task / "train.csv", task / "held.csv"
    header = ";".join([f"f{i}" for i in range(6)] + ["label"])
    rows = [";".join([*map(repr, map(float, r)), str(int(t))]) for r, t in zip(x, y, strict=True)]
    csv_path.write_text("\n".join([header, *rows[:300]]) + "\n")
    held_path.write_text("\n".join([header, *rows[300:]]) + "\n")
    model = ["--arch", "mlp", "--arch-kwargs", json.dumps(ARCH_KWARGS)]
    fmt = ["--csv-delimiter", ";", "--input-shape", "2,3"]
    art, report = task / "q.pbcm", task / "q.json"
    certify = ["certify", str(task / "final.safetensors"), "--method", "quantize", "--levels", "4"]
    data_args = ["--data", str(csv_path), *fmt, "--heldout", str(held_path)]
    out_args = ["--artifact", str(art), "-o", str(report)]
    made = CliRunner().invoke(cli, [*certify, *model, *data_args, *out_args])
    assert made.exit_code == 0, made.output
    inputs = json.loads(report.read_text())["inputs"]
    data, held = inputs["data"], inputs["heldout"]
    assert (held["csv_delimiter"], held["input_shape"], held["n"]) == (";", [2, 3], 100)
    assert (data["csv_delimiter"], data["input_shape"], data["stored_shape"]) == (";", [2, 3], [6])
    assert (data["reshape"], data["scaling"], data["label_column"]) == (
        "--input-shape",
        "none",
        "label",
    )
    checked = CliRunner().invoke(cli, ["verify", str(report), "--json"])
    assert checked.exit_code == 0, checked.output
    for option, value in (("--input-shape", "6"), ("--csv-delimiter", ","), ("--scale", "none")):
        refused = CliRunner().invoke(cli, ["verify", str(report), option, value])
        assert refused.exit_code == 2 and f"{option} applies to an ARTIFACT only" in refused.stderr

    def verify_artifact(*extra: str) -> Any:
        args = ["verify", str(art), *model, "--data", str(csv_path), "--report", str(report)]
        return CliRunner().invoke(cli, [*args, *extra])

    assert verify_artifact(*fmt).exit_code == 0
    unshaped = verify_artifact("--csv-delimiter", ";")
    assert unshaped.exit_code == 1 and "inputs.data" in unshaped.stderr
    comma = verify_artifact()
    assert comma.exit_code == 3 and "pass --csv-delimiter ';'" in comma.stderr


def test_errors_name_the_option_that_gave_the_file(tmp_path: Path) -> None:
    """A broken --heldout file is reported as --heldout, not as --data."""
    import json

    from click.testing import CliRunner

    from pacbound.cli.main import cli
    from tests.report._tiny import ARCH_KWARGS, make_task

    task = make_task(tmp_path)
    held = tmp_path / "held.csv"
    held.write_text("a;b;c;d;e;f;label\n" + "0.5;" * 6 + "1\n")
    args = ["certify", str(task / "final.safetensors"), "--method", "quantize", "--levels", "4"]
    args += ["--arch", "mlp", "--arch-kwargs", json.dumps(ARCH_KWARGS)]
    args += ["--data", str(task / "train.npz"), "--heldout", str(held), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"Error: --heldout: {held} line 2, column 'a;b;c;d;e;f;label'")
    assert "pass --csv-delimiter ';'" in result.stderr
    with pytest.raises(InvalidInputError, match=r"^--unlabeled: .*held\.csv line 2") as caught:
        load_dataset(held, option="--unlabeled")
    assert caught.value.param == "--unlabeled"

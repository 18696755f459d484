"""Options that do not apply are refused (exit 2); cheap checks run before anything is
loaded and name the user's option; --threads; held-out data must not be the training data."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pacbound.certify.registry import METHODS
from pacbound.cli.applicability import RULES, Run, conditions, method_condition
from pacbound.cli.main import cli
from pacbound.cli.preflight import check_disjoint_inputs
from pacbound.errors import InvalidInputError
from pacbound.io import load_dataset
from pacbound.models import mlp
from tests.io.conftest import write_idx_folder
from tests.report._tiny import ARCH_KWARGS, make_task

#: Internal names that must never reach a user through the CLI.
INTERNAL_NAMES = re.compile(
    r"TrainingRecipe|delta part|grid size|need epochs|(?<![-\w])(seed|levels|d|n|batch_size) must"
)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("applicability"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Paths of each data kind; their contents are never read (the refusals come first)."""
    root = tmp_path_factory.mktemp("kinds")
    for name in ("d.npz", "d.csv", "d.safetensors"):
        (root / name).write_bytes(b"not read")
    write_idx_folder(root / "mnist", n=4)
    return root


def _certify(root: Path, *extra: str, data: str = "d.npz") -> list[str]:
    """A certify command on a checkpoint that does not exist: only a check that runs before
    loading can produce anything but the missing-checkpoint error."""
    return ["certify", str(root / "missing.safetensors"), "--data", str(root / data), *extra]


def _compress(root: Path, *extra: str, data: str = "d.npz") -> list[str]:
    return [
        "compress",
        str(root / "missing.safetensors"),
        "--data",
        str(root / data),
        "-o",
        str(root / "out" / "m.pbcm"),
        *extra,
    ]


def _one_line_error(result: object, code: int) -> str:
    assert result.exit_code == code, result.stderr  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert len(lines[0]) < 300
    return str(lines[0])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            ("--prior-fraction", "0.3"),
            "--prior-fraction applies only with --prior data (--method gaussian), and this run "
            "has --prior init: drop --prior-fraction",
            id="prior-fraction-without-data-prior",
        ),
        pytest.param(
            ("--prior", "zero", "--prior-epochs", "3"),
            "--prior-epochs applies only with --prior data (--method gaussian), and this run "
            "has --prior zero: drop --prior-epochs",
            id="prior-epochs-with-zero-prior",
        ),
        pytest.param(
            ("--prior-lr", "0.01"),  # the default value, but typed: it counts
            "--prior-lr applies only with --prior data (--method gaussian), and this run has "
            "--prior init: drop --prior-lr",
            id="prior-lr-default-value-typed",
        ),
        pytest.param(
            ("--prior-lr-schedule", "constant"),
            "--prior-lr-schedule applies only with --prior data (--method gaussian), and this "
            "run has --prior init: drop --prior-lr-schedule",
            id="prior-lr-schedule",
        ),
        pytest.param(
            ("--prior-augment-shift", "2"),
            "--prior-augment-shift applies only with --prior data (--method gaussian), and "
            "this run has --prior init: drop --prior-augment-shift",
            id="prior-augment-shift",
        ),
        pytest.param(
            ("--posterior-epochs", "3"),
            "--posterior-epochs applies only with --posterior diagonal (--method gaussian), "
            "and this run has --posterior isotropic: drop --posterior-epochs",
            id="posterior-epochs-isotropic",
        ),
        pytest.param(
            ("--keep-last",),
            "--keep-last applies only with --posterior diagonal (--method gaussian), and this "
            "run has --posterior isotropic: drop --keep-last",
            id="keep-last-isotropic",
        ),
        pytest.param(
            ("--posterior", "isotropic", "--p-min", "0.5"),
            "--p-min applies only with --posterior diagonal (--method gaussian), and this run "
            "has --posterior isotropic: drop --p-min",
            id="p-min-isotropic",
        ),
        pytest.param(
            ("--sigma-lr", "0.1"),
            "--sigma-lr applies only with --posterior diagonal (--method gaussian), and this "
            "run has --posterior isotropic: drop --sigma-lr",
            id="sigma-lr",
        ),
        pytest.param(
            ("--method", "quantize", "--objective", "quad"),
            "--objective applies only with --posterior diagonal (--method gaussian), and this "
            "run has --method quantize: drop --objective",
            id="objective-with-quantize",
        ),
        pytest.param(
            ("--d", "10"),
            "--d applies only with --method subspace, and this run has --method gaussian: drop --d",
            id="d-with-gaussian",
        ),
        pytest.param(
            ("--method", "quantize", "--d", "10"),
            "--d applies only with --method subspace, and this run has --method quantize: drop --d",
            id="d-with-quantize",
        ),
        pytest.param(
            ("--method", "quantize", "--subspace-init", "checkpoint"),
            "--subspace-init applies only with --method subspace, and this run has --method "
            "quantize: drop --subspace-init",
            id="subspace-init-with-quantize",
        ),
        pytest.param(
            ("--method", "subspace", "--zero-level"),
            "--zero-level applies only with --method quantize, and this run has --method "
            "subspace: drop --zero-level",
            id="zero-level-with-subspace",
        ),
        pytest.param(
            ("--method", "quantize", "--init", "i.safetensors"),
            "--init applies only with --method gaussian with --prior init or data, or --method "
            "subspace, and this run has --method quantize: drop --init",
            id="init-with-quantize",
        ),
        pytest.param(
            ("--prior", "zero", "--init", "i.safetensors"),
            "--init applies only with --method gaussian with --prior init or data, or --method "
            "subspace, and this run has --prior zero: drop --init",
            id="init-with-zero-prior",
        ),
        pytest.param(
            ("--method", "subspace", "--mc-passes", "3"),
            "--mc-passes applies only with --method gaussian, and this run has --method "
            "subspace: drop --mc-passes",
            id="mc-passes-with-subspace",
        ),
        pytest.param(
            ("--split", "test"),
            "--split applies only with an MNIST IDX folder as --data, and this run has a .npz "
            "file as --data: drop --split",
            id="split-on-npz",
        ),
        pytest.param(
            ("--heldout-split", "test"),
            "--heldout-split applies only with an MNIST IDX folder as --heldout, and this run "
            "has none as --heldout: drop --heldout-split",
            id="heldout-split-without-heldout",
        ),
        pytest.param(
            ("--heldout", "{root}/d.csv", "--heldout-split", "train"),
            "--heldout-split applies only with an MNIST IDX folder as --heldout, and this run "
            "has a .csv file as --heldout: drop --heldout-split",
            id="heldout-split-on-csv",
        ),
        pytest.param(
            ("--heldout-delta", "0.01"),
            "--heldout-delta applies only with --heldout, and this run has no --heldout: "
            "drop --heldout-delta",
            id="heldout-delta-without-heldout",
        ),
        pytest.param(
            ("--unlabeled-split", "test"),
            "--unlabeled-split applies only with an MNIST IDX folder as --unlabeled, and this "
            "run has none as --unlabeled: drop --unlabeled-split",
            id="unlabeled-split-without-unlabeled",
        ),
        pytest.param(
            ("--disagreement-delta", "0.01"),
            "--disagreement-delta applies only with --heldout or --unlabeled, and this run has "
            "neither: drop --disagreement-delta",
            id="disagreement-delta-without-inputs",
        ),
        pytest.param(
            ("--prior", "zero", "--unlabeled", "{root}/mnist", "--split", "test"),
            "--split applies only with an MNIST IDX folder as --data, and this run has a .npz "
            "file as --data: drop --split",
            id="split-is-for-data-not-unlabeled",
        ),
        pytest.param(
            ("--exit-zero",),
            "--exit-zero applies only with a gate (--max-bound or --fail-if-vacuous), and "
            "this run has no gate: drop --exit-zero",
            id="exit-zero-without-gate",
        ),
    ],
)
def test_certify_refuses_options_that_do_not_apply(
    files: Path, extra: tuple[str, ...], message: str
) -> None:
    args = _certify(files, *(e.replace("{root}", str(files)) for e in extra))
    result = CliRunner().invoke(cli, args)
    assert _one_line_error(result, 2) == f"Error: {message}"


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (("--method", "quantize", "--d", "10"), "--d"),
        (("--method", "quantize", "--projector", "dense"), "--projector"),
        (("--method", "quantize", "--subspace-epochs", "2"), "--subspace-epochs"),
        (("--method", "subspace", "--zero-level"), "--zero-level"),
        (("--method", "quantize", "--init", "i.safetensors"), "--init"),
        (("--method", "quantize", "--split", "test"), "--split"),
    ],
)
def test_compress_refuses_options_that_do_not_apply(
    files: Path, extra: tuple[str, ...], flag: str
) -> None:
    result = CliRunner().invoke(cli, _compress(files, *extra))
    line = _one_line_error(result, 2)
    assert line.startswith(f"Error: {flag} applies only with ")
    assert line.endswith(f": drop {flag}")


@pytest.mark.parametrize(
    "extra",
    [
        ("--prior", "data", "--prior-fraction", "0.3", "--prior-epochs", "2"),
        ("--prior", "zero", "--posterior", "diagonal", "--keep-last", "--p-min", "0.4"),
        ("--method", "subspace", "--d", "10", "--levels", "4", "--init", "i.safetensors"),
        ("--method", "quantize", "--zero-level", "--qat-steps", "2"),
        ("--prior", "zero", "--heldout", "{root}/mnist", "--heldout-split", "test"),
        ("--prior", "zero", "--heldout", "{root}/d.csv", "--heldout-delta", "0.01"),
        ("--prior", "zero", "--split", "test", "--max-bound", "0.5", "--exit-zero"),
        ("--prior", "zero", "--unlabeled", "{root}/mnist", "--unlabeled-split", "test"),
        ("--prior", "zero", "--unlabeled", "{root}/d.csv", "--disagreement-delta", "0.01"),
    ],
)
def test_options_that_apply_pass_the_checks(files: Path, extra: tuple[str, ...]) -> None:
    """Nothing is refused: the run goes on to read the (missing) checkpoint, exit 3."""
    data = "mnist" if "--split" in extra else "d.npz"
    args = _certify(files, *(e.replace("{root}", str(files)) for e in extra), data=data)
    line = _one_line_error(CliRunner().invoke(cli, args), 3)
    assert "missing.safetensors" in line


def test_defaults_of_other_methods_do_not_count(files: Path) -> None:
    """--method quantize leaves --prior, --posterior, --mc-passes… at their defaults: fine."""
    line = _one_line_error(CliRunner().invoke(cli, _certify(files, "--method", "quantize")), 3)
    assert "missing.safetensors" in line


def test_every_rule_names_an_option_of_certify_or_compress() -> None:
    from pacbound.cli.certify_cmd import certify
    from pacbound.cli.compress_cmd import compress

    declared = {p.name for p in (*certify.params, *compress.params)}
    assert set(RULES) <= declared
    for name, method in METHODS.items():
        assert set(method.parameters) <= declared, name


def test_method_conditions_are_derived_from_the_registry() -> None:
    """An option a method lists applies with that method only, under its further rule."""
    for name, method in METHODS.items():
        for option, rule in method.parameters.items():
            condition = method_condition(option)
            assert condition is not None
            params = {"method": name, "data": None, "heldout": None, "unlabeled": None}
            if rule is None:
                assert condition.holds(Run.of(params)), (name, option)
            others = [m for m, other in METHODS.items() if option not in other.parameters]
            for other in others:
                assert not condition.holds(Run.of({**params, "method": other})), (other, option)
                assert condition.has(Run.of({**params, "method": other})) == f"--method {other}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--delta", "1.5"), "--delta must be in (0, 1)"),
        (("--delta", "0.05", "--mc-delta", "0"), "--mc-delta must be in (0, 1)"),
        (("--mc-delta", "0.2"), "--mc-delta (0.2) must be smaller than --delta (0.05)"),
        (("--heldout", "{root}/d.csv", "--heldout-delta", "1"), "--heldout-delta must be in"),
        (("--seed", "-1"), "--seed must be at least 0, got -1"),
        (("--seed", str(2**64)), "--seed must be at most 2**63 - 1"),
        (("--batch-size", "0"), "--batch-size must be at least 1, got 0"),
        (("--mc-passes", "0"), "--mc-passes must be at least 1, got 0"),
        (("--prior-scales", "1:0.1:5"), "--prior-scales: the high end 0.1 must exceed"),
        (("--prior-scales", "0.1,x"), "--prior-scales must be LOW:HIGH:COUNT"),
        (("--prior", "data", "--prior-fraction", "1"), "--prior-fraction must be in (0, 1)"),
        (("--prior", "data", "--prior-epochs", "0"), "--prior-epochs must be at least 1"),
        (("--prior", "data", "--prior-lr", "-1"), "--prior-lr must be > 0"),
        (("--prior", "data", "--prior-augment-shift", "-1"), "--prior-augment-shift must be"),
        (("--posterior", "diagonal", "--posterior-epochs", "-1"), "--posterior-epochs must be"),
        (("--posterior", "diagonal", "--posterior-lr", "-1"), "--posterior-lr must be > 0"),
        (("--posterior", "diagonal", "--sigma-lr", "0"), "--sigma-lr must be > 0"),
        (("--posterior", "diagonal", "--p-min", "2"), "--p-min must be in (0, 1), got 2.0"),
        (("--method", "subspace", "--d", "0"), "--d must be at least 1, got 0"),
        (("--method", "subspace", "--d", "5,5"), "--d lists a value twice (5,5)"),
        (("--method", "quantize", "--levels", "1"), "--levels must be at least 2, got 1"),
        (("--method", "quantize", "--levels", str(2**25)), "--levels must be at most 16777216"),
        (("--method", "subspace", "--subspace-epochs", "-1"), "--subspace-epochs must be at"),
        (("--method", "subspace", "--subspace-lr", "0"), "--subspace-lr must be > 0"),
        (("--method", "subspace", "--subspace-batch-size", "0"), "--subspace-batch-size must"),
        (("--method", "quantize", "--qat-steps", "-1"), "--qat-steps must be at least 0"),
        (("--method", "quantize", "--qat-examples", "0"), "--qat-examples must be at least 1"),
        (("--method", "quantize", "--qat-lr", "0"), "--qat-lr must be"),
        (("--threads", "0"), "--threads must be at least 1, got 0"),
        (("--heldout", "{root}/d.csv", "--disagreement-delta", "0"), "--disagreement-delta must"),
        (
            ("--heldout", "{root}/d.csv", "--delta", "0.6", "--disagreement-delta", "0.4"),
            "--delta (0.6) plus --disagreement-delta (0.4) must be below 1",
        ),
    ],
)
def test_cheap_checks_fail_before_the_checkpoint_is_read(
    files: Path, extra: tuple[str, ...], message: str
) -> None:
    """The checkpoint does not exist: the value error is reported, not the missing file, and
    it names the user's option, never an internal field."""
    args = _certify(files, *(e.replace("{root}", str(files)) for e in extra))
    line = _one_line_error(CliRunner().invoke(cli, args), 3)
    assert message in line
    assert "missing.safetensors" not in line
    assert not INTERNAL_NAMES.search(line), line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--method", "quantize", "--delta", "0"), "--delta must be in (0, 1)"),
        (("--method", "quantize", "--seed", "-3"), "--seed must be at least 0, got -3"),
        (("--method", "quantize", "--levels", "4,4"), "--levels lists a value twice (4,4)"),
        (("--method", "subspace", "--d", "-5"), "--d must be at least 1, got -5"),
        (("--method", "quantize", "--batch-size", "0"), "--batch-size must be at least 1"),
    ],
)
def test_compress_cheap_checks_come_first(
    files: Path, extra: tuple[str, ...], message: str
) -> None:
    line = _one_line_error(CliRunner().invoke(cli, _compress(files, *extra)), 3)
    assert message in line
    assert not INTERNAL_NAMES.search(line), line


def _certify_task(task: Path, *extra: str) -> list[str]:
    return [
        "certify",
        str(task / "final.safetensors"),
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(ARCH_KWARGS),
        "--init",
        str(task / "init.safetensors"),
        "--data",
        str(task / "train.npz"),
        "--prior-scales",
        "1e-3:1:61",
        "--mc-passes",
        "1",
        "--quiet",
        *extra,
    ]


@pytest.fixture
def restore_threads() -> object:
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_threads_sets_torch_and_is_recorded(task: Path, restore_threads: int) -> None:
    other = 1 if restore_threads != 1 else 2
    result = CliRunner().invoke(cli, _certify_task(task, "--threads", str(other), "--json"))
    assert result.exit_code == 0, result.stderr
    assert torch.get_num_threads() == other
    assert json.loads(result.stdout)["options"]["threads"] == other


def test_without_threads_torch_default_is_left_alone(task: Path, restore_threads: int) -> None:
    result = CliRunner().invoke(cli, _certify_task(task, "--json"))
    assert result.exit_code == 0, result.stderr
    assert torch.get_num_threads() == restore_threads
    assert json.loads(result.stdout)["options"]["threads"] is None


def test_compress_records_threads(task: Path, tmp_path: Path, restore_threads: int) -> None:
    args = [
        "compress",
        str(task / "final.safetensors"),
        "--method",
        "quantize",
        "--levels",
        "4",
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(ARCH_KWARGS),
        "--data",
        str(task / "train.npz"),
        "-o",
        str(tmp_path / "m.pbcm"),
        "--threads",
        "1",
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["options"]["threads"] == 1
    assert torch.get_num_threads() == 1


# --- held-out data must not be the training data ----------------------------------------------


def test_heldout_equal_to_data_is_refused(task: Path, tmp_path: Path) -> None:
    """Another path to the same bytes is the same data."""
    copy = tmp_path / "copy.npz"
    shutil.copyfile(task / "train.npz", copy)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        cli, _certify_task(task, "--heldout", str(copy), "--output", str(out))
    )
    line = _one_line_error(result, 3)
    assert line == (
        f"Error: --heldout {copy} holds the same examples as --data (same files, split and "
        "subset): it must be data never used for training or the bound; give a separate set "
        "(for an MNIST folder, e.g. --heldout-split test)"
    )
    assert not out.exists()


def test_unlabeled_equal_to_data_is_refused(task: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = _certify_task(task, "--unlabeled", str(task / "train.npz"), "--output", str(out))
    line = _one_line_error(CliRunner().invoke(cli, args), 3)
    assert line == (
        f"Error: --unlabeled {task / 'train.npz'} holds the same examples as --data (same "
        "files, split and subset): it must be data never used for training or the bound; "
        "give a separate set"
    )
    assert not out.exists()


@pytest.fixture(scope="module")
def idx_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MNIST-style folder of 4×4 images, an MLP for it, its init and 'trained' weights."""
    root = tmp_path_factory.mktemp("idx")
    write_idx_folder(root / "mnist", n=40)
    torch.manual_seed(0)
    model = mlp(in_features=16, hidden=[8], num_classes=10)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, root / "init.safetensors")
    save_file({k: v + 0.01 for k, v in state.items()}, root / "final.safetensors")
    return root


def _certify_idx(root: Path, heldout_split: str) -> list[str]:
    return [
        "certify",
        str(root / "final.safetensors"),
        "--arch",
        "mlp",
        "--arch-kwargs",
        '{"in_features": 16, "hidden": [8], "num_classes": 10}',
        "--init",
        str(root / "init.safetensors"),
        "--data",
        str(root / "mnist"),
        "--split",
        "train",
        "--heldout",
        str(root / "mnist"),
        "--heldout-split",
        heldout_split,
        "--prior-scales",
        "1e-3:1:5",
        "--mc-passes",
        "1",
        "--quiet",
        "--json",
    ]


def test_same_mnist_folder_other_split_is_a_valid_heldout(idx_task: Path) -> None:
    result = CliRunner().invoke(cli, _certify_idx(idx_task, "test"))
    assert result.exit_code == 0, result.stderr
    heldout = json.loads(result.stdout)["results"]["heldout"]
    assert heldout["n"] == 20


def test_same_mnist_folder_same_split_is_refused(idx_task: Path) -> None:
    line = _one_line_error(CliRunner().invoke(cli, _certify_idx(idx_task, "train")), 3)
    assert line == (
        f"Error: --heldout {idx_task / 'mnist'} holds the same examples as --data (same "
        "files, split and subset): it must be data never used for training or the bound; "
        "give a separate set (for an MNIST folder, e.g. --heldout-split test)"
    )


def test_check_disjoint_inputs(task: Path, tmp_path: Path) -> None:
    train = load_dataset(task / "train.npz").provenance
    shutil.copyfile(task / "train.npz", tmp_path / "again.npz")
    again = load_dataset(tmp_path / "again.npz").provenance
    with pytest.raises(InvalidInputError, match=r"^--unlabeled .*again\.npz holds the same") as e:
        check_disjoint_inputs(train, again, "--unlabeled")
    assert e.value.param == "--unlabeled"
    assert "--heldout-split" not in str(e.value)  # the MNIST hint is for --heldout only
    check_disjoint_inputs(train, load_dataset(task / "test.npz").provenance, "--heldout")
    # A subset of the same file is other examples (partial overlap is not detected here).
    subset = load_dataset(task / "train.npz", subset=10).provenance
    check_disjoint_inputs(train, subset, "--heldout")


def test_relabeled_copy_is_still_the_same_examples(task: Path) -> None:
    """A label map or normalization changes how the examples look, not which they are."""
    train = load_dataset(task / "train.npz").provenance
    relabeled = load_dataset(task / "train.npz", normalize="0.5,2", label_map="0:1,1:0")
    with pytest.raises(InvalidInputError, match="holds the same examples"):
        check_disjoint_inputs(train, relabeled.provenance, "--heldout")


def test_verify_has_threads(tmp_path: Path, restore_threads: int) -> None:
    """The option is parsed (and torch set) before verify reads anything."""
    bad = CliRunner().invoke(cli, ["verify", str(tmp_path / "r.json"), "--threads", "0"])
    assert _one_line_error(bad, 3) == "Error: --threads must be at least 1, got 0"
    other = 1 if restore_threads != 1 else 2
    CliRunner().invoke(cli, ["verify", str(tmp_path / "r.json"), "--threads", str(other)])
    assert torch.get_num_threads() == other


def test_unlabeled_reads_of_the_training_features_are_refused(tmp_path: Path) -> None:
    """An unlabeled read opens only the features file (IDX images, x.npy): still the same
    examples when that file is one of the training files, with the same split."""
    from pacbound.io import load_features

    folder = write_idx_folder(tmp_path / "mnist", n=8)
    train = load_dataset(folder, split="train").provenance
    same = load_features(folder, split="train").provenance
    assert len(same.files) == 1 < len(train.files)
    with pytest.raises(InvalidInputError, match=r"^--unlabeled \S+ holds the same examples"):
        check_disjoint_inputs(train, same, "--unlabeled")
    check_disjoint_inputs(train, load_features(folder, split="test").provenance, "--unlabeled")
    # A copy of a streamed folder is the same data; its x.npy alone (unlabeled) too.
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "x.npy", rng.standard_normal((4, 3)).astype(np.float32))
    np.save(tmp_path / "a" / "y.npy", np.array([0, 1, 0, 1]))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a = load_dataset(tmp_path / "a").provenance
    with pytest.raises(InvalidInputError, match="holds the same examples"):
        check_disjoint_inputs(a, load_dataset(tmp_path / "b").provenance, "--heldout")
    with pytest.raises(InvalidInputError, match="holds the same examples"):
        check_disjoint_inputs(a, load_features(tmp_path / "b").provenance, "--unlabeled")


def test_large_seeds_are_read_exactly(files: Path) -> None:
    """Integers are not read through a float: 2**63 - 1 is valid, 2**63 is not (and the
    message quotes it exactly, not 2**63 rounded from 2**63 - 1)."""
    largest = _certify(files, "--prior", "zero", "--seed", str(2**63 - 1))
    assert "missing.safetensors" in _one_line_error(CliRunner().invoke(cli, largest), 3)
    beyond = _certify(files, "--prior", "zero", "--seed", str(2**63))
    line = _one_line_error(CliRunner().invoke(cli, beyond), 3)
    assert line == f"Error: --seed must be at most 2**63 - 1, got {2**63}"
    from pacbound.cli.options import INT

    assert INT.convert("1e3", None, None) == 1000
    assert INT.convert(str(2**63 - 1), None, None) == 2**63 - 1


def _typed(param: object) -> tuple[str, ...]:
    """The option typed with a valid value."""
    import click

    assert isinstance(param, click.Option)
    if param.is_flag:
        return (param.opts[0],)
    if isinstance(param.type, click.Choice):
        return (param.opts[0], str(param.type.choices[-1]))
    from pacbound.cli.options import FLOAT

    return (param.opts[0], "0.01" if param.type is FLOAT else "2")


def _violating_args(cmd: object, condition: object, build: object) -> tuple[str, ...] | None:
    """Arguments of a run of ``cmd`` in which ``condition`` does not hold: the defaults, or
    another --method (None: it holds in every such run)."""
    (method,) = [p for p in cmd.params if p.name == "method"]  # type: ignore[attr-defined]
    runs = [("--method", m) for m in method.type.choices]
    for extra in runs if method.required else [(), *runs]:
        args = build(Path("/nowhere"), *extra)[1:]  # type: ignore[operator]
        params = cmd.make_context(args[0], args[1:], resilient_parsing=True).params  # type: ignore[attr-defined]
        if not condition.holds(Run.of(params)):  # type: ignore[attr-defined]
            return extra
    return None


@pytest.mark.parametrize("command", ["certify", "compress"])
def test_every_condition_is_enforced(files: Path, command: str) -> None:
    """Each option with a condition (the table's, or a method's), typed in a run its condition
    excludes: exit 2, one line naming the option and what it needs."""
    from pacbound.cli.certify_cmd import certify
    from pacbound.cli.compress_cmd import compress

    cmd, build = (certify, _certify) if command == "certify" else (compress, _compress)
    checked = always = 0
    for param in cmd.params:
        for condition in conditions(param.name or ""):
            base = _violating_args(cmd, condition, build)
            if base is None:
                always += 1
                continue
            result = CliRunner().invoke(cli, build(files, *base, *_typed(param)))
            line = _one_line_error(result, 2)
            flag = re.escape(_typed(param)[0])
            needs = re.escape(condition.needs)
            assert re.match(rf"Error: {flag} applies only with {needs}, and this run has ", line)
            checked += 1
    assert checked > (20 if command == "certify" else 8)
    # compress is always a compression run: the options both its methods use always apply
    both = [
        p
        for p in cmd.params
        if all(p.name in METHODS[m].parameters for m in ("subspace", "quantize"))
    ]
    assert always == (0 if command == "certify" else len(both))

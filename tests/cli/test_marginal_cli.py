"""``pacbound certify --method marginal`` end to end: no checkpoint, the n = 2 closed form
through the CLI, binary MNIST with --label-map, verify, forged reports, the memory
refusal, applicability, the optional checkpoint's held-out error, report and plot."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pacbound.cli.main import cli
from pacbound.io import load_dataset
from pacbound.models import mlp
from pacbound.report.document import results_hash
from pacbound.report.validate import validation_errors

pytest.importorskip("pacbound.marginal")

MNIST = Path(__file__).resolve().parents[2] / "examples" / "data" / "mnist"
BINARY = "0-4:0,5-9:1"
ARCH_KWARGS = {"in_features": 784, "hidden": [32, 32], "num_classes": 2}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("marginal_cli")
    x2 = np.array([[1.0, 0.5, -0.2], [0.3, 1.0, 0.4]], dtype=np.float32)
    np.savez(root / "two.npz", x=x2, y=np.array([0, 1]))
    train = load_dataset(MNIST, subset=120)
    test = load_dataset(MNIST, split="test", subset=60)
    np.savez(root / "train.npz", x=train.x.numpy(), y=train.y.numpy())
    np.savez(root / "test.npz", x=test.x.numpy(), y=test.y.numpy())
    np.savez(root / "small.npz", x=train.x[:30].numpy(), y=train.y[:30].numpy())
    torch.manual_seed(0)
    model = mlp(**ARCH_KWARGS)  # type: ignore[arg-type]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "m.safetensors")
    return root


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def _mnist(files: Path, out: Path, *extra: str, data: str = "train.npz") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    code, _, err = _run(
        "certify",
        "--method",
        "marginal",
        "--data",
        str(files / data),
        "--label-map",
        BINARY,
        "--kernel-depth",
        "2",
        "--is-samples",
        "300",
        "--quiet",
        "--output",
        str(out / "report.json"),
        "--save-kernel",
        str(out / "kernel.json"),
        *extra,
    )
    assert code == 0, err
    return out / "report.json"


def test_two_examples_through_the_cli_against_the_closed_form(files: Path) -> None:
    code, out, err = _run(
        "certify", "--method", "marginal", "--data", str(files / "two.npz"),
        "--kernel", "erf", "--kernel-depth", "1", "--sigma-w", "1.5", "--sigma-b", "0.2",
        "--is-samples", "4000", "--json", "--num-classes", "2",
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)["results"]
    # erf NNGP, one hidden layer (Williams 1997), written out here
    x = np.array([[1.0, 0.5, -0.2], [0.3, 1.0, 0.4]], dtype=np.float32).astype(np.float64)
    k0 = 1.5**2 * x @ x.T / 3 + 0.2**2
    d = np.diag(k0)
    e = (2 / math.pi) * np.arcsin(2 * k0 / np.sqrt(np.outer(1 + 2 * d, 1 + 2 * d)))
    k = 1.5**2 * e + 0.2**2 + 1e-6 * np.eye(2)
    rho = -k[0, 1] / math.sqrt(k[0, 0] * k[1, 1])  # labels 0, 1: opposite signs
    exact = math.log(0.25 + math.asin(rho) / (2 * math.pi))
    delta_is = 0.025
    assert res["log_orthant"]["log_lower"] <= exact
    assert res["kl_nats"] == pytest.approx(-exact + math.log(1 / delta_is), abs=0.02)
    rhs = (res["kl_nats"] + math.log(2 * math.sqrt(2) / 0.025)) / 2
    assert res["bound"] == pytest.approx((1 - math.exp(-rhs)) * (1 + 1e-9), rel=1e-12)
    assert res["kernel"]["name"] == "erf" and res["kernel"]["depth"] == 1
    assert res["labels"] == {"classes": 2, "constraints": 2, "counts": [1, 1], "label_map": None}
    assert "model" not in json.loads(out)["inputs"]


def test_binary_mnist_report_verify_and_forgery(files: Path, tmp_path: Path) -> None:
    report = _mnist(files, tmp_path)
    document = json.loads(report.read_text())
    assert validation_errors(document) == []
    res = document["results"]
    labels = (load_dataset(files / "train.npz").y >= 5).long()
    assert res["labels"]["counts"] == [int((labels == 0).sum()), int((labels == 1).sum())]
    assert res["labels"]["label_map"] == BINARY
    assert document["inputs"]["data"]["label_map"] == BINARY
    assert document["options"]["kernel_depth"] == 2
    assert 0 < res["bound"] < 1 and res["kl_nats"] > 0
    assert res["ep"]["log_z"] >= res["log_orthant"]["log_lower"]  # EP sits above the bound
    code, out, err = _run("verify", str(report), "--json")
    assert code == 0, err
    checks = {f["field"]: f for f in json.loads(out)["fields"]}
    assert checks["log_orthant.log_lower"]["agree"] and checks["ep.log_z"]["agree"]
    assert "search[0].bound" not in checks  # the grid search is a choice field
    # a forged certified ln P(U) (hash re-fixed) is refused
    document["results"]["log_orthant"]["log_lower"] /= 2
    document["results_sha256"] = results_hash(document["results"])
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document))
    code, out, err = _run("verify", str(forged), "--json")
    assert code == 1
    assert "log_orthant.log_lower" in err
    # another kernel file (depth 3 claimed) is refused before anything is recomputed
    kernel = json.loads((tmp_path / "kernel.json").read_text())
    kernel["kernel"]["depth"] = 3
    (tmp_path / "kernel.json").write_text(json.dumps(kernel))
    document = json.loads(report.read_text())
    record = document["inputs"]["kernel"]
    import hashlib

    record["sha256"] = hashlib.sha256((tmp_path / "kernel.json").read_bytes()).hexdigest()
    forged.write_text(json.dumps(document))
    code, _, err = _run("verify", str(forged))
    assert code == 3 and "kernel file's kernel is not grid point 0" in err


def test_memory_refusal_names_the_largest_n_before_any_work(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pacbound.marginal
    from pacbound.marginal import matrix_bytes, max_n_for_memory

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the kernel was computed before the memory check")

    monkeypatch.setattr(pacbound.marginal, "fc_nngp", forbidden)
    budget = matrix_bytes(50, 2)
    code, _, err = _run(
        "certify", "--method", "marginal", "--data", str(files / "train.npz"),
        "--label-map", BINARY, "--kernel-depth", "1", "--max-memory", str(budget), "--quiet",
    )  # fmt: skip
    assert code == 3, err
    largest = max_n_for_memory(budget, 2)
    assert re.search(rf"n = 120 .* the largest n that fits is {largest} ", err), err
    assert "--max-memory" in err and err.count("\n") == 1


M = ("--method", "marginal")
G = ("--method", "gaussian")


@pytest.mark.parametrize(
    ("extra", "message", "code"),
    [
        ((*M, "--posterior", "diagonal"), "--posterior applies only", 2),
        ((*M, "--levels", "4"), "--levels applies only", 2),
        ((*M, "--kernel-draws", "10"), "--kernel-draws applies only with --kernel monte-carlo", 2),
        (
            (*M, "--heldout-delta", "0.1"),
            "--heldout-delta applies only with --method gaussian or subspace or quantize",
            2,
        ),
        ((*M, "--unlabeled", "{root}/test.npz"), "--unlabeled applies only", 2),
        ((*G, "--kernel", "erf"), "--kernel applies only with --method marginal", 2),
        ((*G, "--is-samples", "5"), "--is-samples applies only", 2),
        (G, "--method gaussian certifies a trained model: give its CHECKPOINT", 2),
        ((*M, "--is-delta", "0.07"), "--is-delta (0.07) must be smaller than --delta", 3),
        ((*M, "--sigma-w", "1,x"), "--sigma-w '1,x': give a number", 3),
        ((*M, "--sigma-w", "0"), "--sigma-w values must be > 0", 3),
        ((*M, "--kernel", "monte-carlo"), "give --arch", 2),
        ((*M, "--label-map", "0-4:0,3-9:1"), "--label-map: label 3 is mapped twice", 3),
        ((*M, "--arch", "mlp"), "--arch is not used by --kernel relu", 2),
    ],
)
def test_options_that_do_not_apply_are_refused(
    files: Path, extra: tuple[str, ...], message: str, code: int
) -> None:
    args = [e.replace("{root}", str(files)) for e in extra]
    depth = ["--kernel-depth", "1"] if "marginal" in args and "monte-carlo" not in args else []
    got, _, err = _run("certify", "--data", str(files / "two.npz"), *depth, *args)
    assert got == code, err
    assert message in err, err


def test_gaussian_refuses_kernel_depth(files: Path) -> None:
    code, _, err = _run(
        "certify", str(files / "m.safetensors"), "--data", str(files / "two.npz"),
        "--kernel-depth", "1",
    )  # fmt: skip
    assert (
        code == 2
        and "--kernel-depth applies only with --kernel relu or erf or conv-relu (--method marginal)"
        in err
    )


def test_a_checkpoint_without_heldout_is_refused(files: Path) -> None:
    code, _, err = _run(
        "certify", str(files / "m.safetensors"), "--method", "marginal", "--arch", "mlp",
        "--arch-kwargs", json.dumps(ARCH_KWARGS), "--data", str(files / "small.npz"),
    )  # fmt: skip
    assert code == 2 and "used only for its error on --heldout" in err


def test_checkpoint_heldout_error_beside_q_and_depth_from_arch(files: Path, tmp_path: Path) -> None:
    """With --arch mlp (two hidden layers) the kernel depth is read from --arch-kwargs; the
    checkpoint's held-out error is counted independently here."""
    code, out, err = _run(
        "certify", str(files / "m.safetensors"), "--method", "marginal",
        "--arch", "mlp", "--arch-kwargs", json.dumps(ARCH_KWARGS),
        "--data", str(files / "train.npz"), "--heldout", str(files / "test.npz"),
        "--label-map", BINARY, "--is-samples", "200", "--json",
        "--save-kernel", str(tmp_path / "k.json"), "--output", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    res = document["results"]
    assert res["kernel"]["depth"] == 2 and document["options"]["kernel_depth"] == 2
    test = load_dataset(files / "test.npz", label_map=BINARY)
    model = mlp(**ARCH_KWARGS)  # type: ignore[arg-type]
    from safetensors.torch import load_file

    model.load_state_dict(load_file(files / "m.safetensors"))
    with torch.no_grad():
        wrong = int((model(test.x).argmax(1) != test.y).sum())
    held = res["heldout"]
    assert held["checkpoint_error"] == wrong / 60 and held["examples"] == 60
    assert 0.0 < held["q_error_estimate"] < 1.0 and "not a bound" in held["note"]
    assert document["inputs"]["model"]["provenance"]["architecture"] == "mlp"
    code, _, err = _run("verify", str(tmp_path / "r.json"))
    assert code == 0, err


def test_multiclass_heldout_estimate_and_multiclass_certifies(files: Path, tmp_path: Path) -> None:
    """Ten classes (C fixed by --num-classes): Q's held-out error estimated from the
    conditioned argmax of 10 GPs, labelled an estimate, and recomputed by verify."""
    code, out, err = _run(
        "certify", "--method", "marginal", "--data", str(files / "small.npz"),
        "--heldout", str(files / "test.npz"), "--kernel-depth", "1", "--num-classes", "10",
        "--is-samples", "100", "--json", "--output", str(tmp_path / "r.json"),
        "--save-kernel", str(tmp_path / "k.json"),
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)["results"]
    assert res["labels"]["classes"] == 10 and res["labels"]["constraints"] == 270
    held = res["heldout"]
    assert held["examples"] == 60 and 0.3 < held["q_error_estimate"] < 0.9
    assert "not a bound" in held["note"] and held["effective_sample_size"] > 1
    code, _, err = _run("verify", str(tmp_path / "r.json"))
    assert code == 0, err
    code, out, err = _run(
        "certify", "--method", "marginal", "--data", str(files / "two.npz"),
        "--label-map", "0:0,1:2", "--kernel-depth", "1", "--is-samples", "200", "--json",
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)["results"]
    assert res["labels"]["classes"] == 3 and res["labels"]["constraints"] == 4
    assert res["verdict"]["chance_error"] == pytest.approx(2 / 3)


def test_singular_kernel_exits_4(files: Path, tmp_path: Path) -> None:
    x = np.array([[1.0, 0.0], [1.0, 1e-13], [0.0, 1.0]])
    np.savez(tmp_path / "near.npz", x=x, y=np.array([0, 1, 1]))
    code, _, err = _run(
        "certify", "--method", "marginal", "--data", str(tmp_path / "near.npz"),
        "--kernel-depth", "1", "--jitter", "1e-300", "--quiet", "--num-classes", "2",
    )  # fmt: skip
    assert code == 4, err
    # 1e-300 is below the kernel's float64 resolution: refused before the factorisation
    assert err.count("\n") == 1 and "below the float64 resolution" in err and "jitter" in err
    # no jitter derived from S's kernel is suggested: a grid fixed in advance, paid in δ
    assert "after seeing S" in err and "--jitter grid fixed in advance" in err
    assert "e.g. 1e-6 ×" not in err and "mean diagonal" not in err


def test_report_table_and_plot_of_several_reports(files: Path, tmp_path: Path) -> None:
    first = _mnist(files, tmp_path / "a", data="small.npz")
    second = _mnist(files, tmp_path / "b", "--sigma-w", "1,2", data="small.npz")
    code, out, err = _run("report", str(first), str(second), "--format", "csv")
    assert code == 0, err
    rows = out.strip().splitlines()
    assert rows[0].startswith("report,method,certified,n,risk_upper,kl_nats")
    assert "kernel" in rows[0] and "relu, depth 2" in rows[1]
    bound = json.loads(first.read_text())["results"]["bound"]
    from pacbound.bounds import format_up

    assert f",{format_up(bound, 4)}," in rows[1]
    pytest.importorskip("matplotlib")
    code, _, err = _run("plot", str(first), str(second), "-o", str(tmp_path / "n.png"))
    assert code == 0, err
    assert (tmp_path / "n.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = _run("plot", str(second), "-o", str(tmp_path / "one.png"))
    assert code == 0, err


def test_monte_carlo_kernel_seeded_from_the_seed_alone(files: Path, tmp_path: Path) -> None:
    """M random initialisations of --arch, their seed derived from --seed only: recorded,
    the same for other labels, another for another --seed; verify recomputes the kernel."""
    from pacbound.certify.marginal_options import derived_seed

    arch = {"in_features": 784, "hidden": [16], "num_classes": 2}
    seeds = []
    for seed, label_map in (("0", BINARY), ("0", "0-5:0,6-9:1")):
        out = tmp_path / f"{seed}-{label_map}"
        out.mkdir()
        code, stdout, err = _run(
            "certify", "--method", "marginal", "--data", str(files / "small.npz"),
            "--label-map", label_map, "--kernel", "monte-carlo", "--arch", "mlp",
            "--arch-kwargs", json.dumps(arch), "--kernel-draws", "20", "--jitter", "1e-2",
            "--is-samples", "100", "--seed", seed, "--json",
            "--output", str(out / "r.json"), "--save-kernel", str(out / "k.json"),
        )  # fmt: skip
        assert code == 0, err
        extra = json.loads(stdout)["results"]["kernel"]["extra"]
        assert extra["draws"] == 20 and extra["readout"] == "second-minus-first"
        seeds.append(extra["seed"])
    assert seeds[0] == seeds[1] == derived_seed(0, "kernel") != derived_seed(3, "kernel")
    code, _, err = _run("verify", str(tmp_path / f"0-{BINARY}" / "r.json"))
    assert code == 0, err


def test_conv_kernel_on_images(tmp_path: Path) -> None:
    """--kernel conv-relu on (n, 1, 6, 6) images: the filter size and pooling recorded,
    verify recomputes it; flat rows are refused with the fix (--input-shape)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 1, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "img.npz", x=x, y=(x.mean(axis=(1, 2, 3)) > 0).astype(np.int64))
    np.savez(tmp_path / "flat.npz", x=x.reshape(12, 36), y=np.arange(12) % 2)
    base = ["certify", "--method", "marginal", "--kernel", "conv-relu", "--kernel-depth", "1"]
    base += ["--num-classes", "2"]
    code, _, err = _run(
        *base, "--data", str(tmp_path / "img.npz"), "--kernel-filter-size", "3",
        "--is-samples", "100", "--quiet", "--output", str(tmp_path / "r.json"),
        "--save-kernel", str(tmp_path / "k.json"),
    )  # fmt: skip
    assert code == 0, err
    kernel = json.loads((tmp_path / "r.json").read_text())["results"]["kernel"]
    assert kernel["extra"] == {"filter_size": 3, "pooling": "global-average"}
    code, _, err = _run("verify", str(tmp_path / "r.json"))
    assert code == 0, err
    code, _, err = _run(*base, "--data", str(tmp_path / "flat.npz"), "--quiet")
    assert code == 3 and "--input-shape C,H,W" in err
    # a label at or above the C fixed in advance is refused, naming the file (before any work)
    np.savez(tmp_path / "three.npz", x=x, y=np.arange(12) % 3)
    code, _, err = _run(*base, "--data", str(tmp_path / "three.npz"), "--quiet")
    assert code == 3 and "--data" in err and "three.npz" in err
    assert "holds the label 2, outside 0..1" in err and "--num-classes" in err

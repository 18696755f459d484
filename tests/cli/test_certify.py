"""`pacbound certify` end to end on a tiny synthetic task (CliRunner; exit codes, reports)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pacbound.cli.main import cli
from pacbound.models import mlp
from pacbound.posterior.io import load_posterior


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("task")
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    x = torch.randn(400, 6, generator=gen) + 1.5 * (2 * y[:, None] - 1).float()
    np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
    np.savez(root / "test.npz", x=x[:200].numpy() + 0.1, y=y[:200].numpy())
    torch.manual_seed(0)
    model = mlp(in_features=6, hidden=[8], num_classes=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "init.safetensors")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        root / "final.safetensors",
    )
    return root


def _args(task: Path, *extra: str) -> list[str]:
    return [
        "certify",
        str(task / "final.safetensors"),
        "--arch",
        "mlp",
        "--arch-kwargs",
        '{"in_features": 6, "hidden": [8], "num_classes": 2}',
        "--init",
        str(task / "init.safetensors"),
        "--data",
        str(task / "train.npz"),
        "--prior-scales",
        "1e-3:1:61",
        "--mc-passes",
        "2",
        "--quiet",
        *extra,
    ]


def test_certify_json_report_and_files(task: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    post = tmp_path / "post.safetensors"
    result = CliRunner().invoke(
        cli,
        _args(
            task,
            "--json",
            "--output",
            str(out),
            "--save-posterior",
            str(post),
            "--heldout",
            str(task / "test.npz"),
        ),
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == json.loads(out.read_text())
    res = doc["results"]
    assert doc["schema_version"] == 2
    assert "NOT the checkpoint's point weights" in res["certified_classifier"]
    assert res["n"] == 400 and res["empirical_risk"]["draws"] == 800
    assert res["empirical_risk"]["estimate"] <= res["empirical_risk"]["upper_bound"] <= res["bound"]
    parts = res["delta_budget"]["parts"]
    assert math.isclose(sum(p["delta"] for p in parts), 0.05)
    assert res["heldout"]["n"] == 200
    assert doc["inputs"]["data"]["files"][0]["sha256"]
    # The saved posterior reproduces the KL of the report exactly.
    assert load_posterior(post).kl() == pytest.approx(res["kl_nats"], rel=1e-12)


def test_table_output_rounds_up(task: Path) -> None:
    result = CliRunner().invoke(cli, _args(task))
    assert result.exit_code == 0, result.stderr
    assert "bound on true 0-1 error" in result.stdout
    assert "(rounded up)" in result.stdout


def test_gates(task: Path) -> None:
    runner = CliRunner()
    failed = runner.invoke(cli, _args(task, "--max-bound", "0.0001"))
    assert failed.exit_code == 1
    assert "above --max-bound 0.0001" in failed.stderr
    passed = runner.invoke(cli, _args(task, "--max-bound", "0.9999", "--fail-if-vacuous"))
    assert passed.exit_code == 0, passed.stderr
    report_only = runner.invoke(cli, _args(task, "--max-bound", "0.0001", "--exit-zero"))
    assert report_only.exit_code == 0


def test_same_seed_identical_results_block(task: Path) -> None:
    runner = CliRunner()
    a = json.loads(runner.invoke(cli, _args(task, "--json")).stdout)
    b = json.loads(runner.invoke(cli, _args(task, "--json")).stdout)
    assert a["results"] == b["results"]
    assert a["results_sha256"] == b["results_sha256"]


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (("--delta", "0"), r"--delta must be in \(0, 1\)"),
        (("--mc-delta", "0.06"), r"--mc-delta .* must be smaller than --delta"),
        (("--prior", "data", "--prior-fraction", "1"), r"--prior-fraction must be in"),
        (("--prior", "data", "--prior-fraction", "0"), r"--prior-fraction must be in"),
        (("--prior-scales", "x:y"), r"--prior-scales must be"),
        (("--prior", "data", "--prior-augment-shift", "2"), r"need N×C×H×W"),
    ],
)
def test_bad_options_exit_3(
    task: Path, tmp_path: Path, extra: tuple[str, ...], pattern: str
) -> None:
    args = _args(task, *extra, "--output", str(tmp_path / "r.json"))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:")
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_unwritable_output_is_reported_before_work(task: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _args(task, "--output", str(tmp_path / "no" / "r.json")))
    assert result.exit_code == 3
    assert "does not exist" in result.stderr


def test_init_of_another_architecture(task: Path, tmp_path: Path) -> None:
    other = mlp(in_features=6, hidden=[5], num_classes=2)
    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "i.safetensors"
    )
    args = _args(task)
    args[args.index("--init") + 1] = str(tmp_path / "i.safetensors")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3
    assert result.stderr.startswith("Error:") and "Traceback" not in result.stderr


def test_keyboard_interrupt_exits_130_without_report(
    task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pacbound.certify.gaussian_method as gaussian

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gaussian, "certify_gaussian", interrupted)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, _args(task, "--output", str(out)))
    assert result.exit_code == 130
    assert result.stderr.strip() == "Error: interrupted; no report was written."
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_real_signal_mid_run_leaves_no_files(
    task: Path, tmp_path: Path, sig: str, code: int
) -> None:
    import signal
    import subprocess
    import sys
    import time

    args = _args(
        task,
        "--posterior",
        "diagonal",
        "--posterior-epochs",
        "100000",
        "--output",
        str(tmp_path / "r.json"),
    )
    args.remove("--quiet")
    with subprocess.Popen(
        [sys.executable, "-m", "pacbound", *args],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    ) as proc:
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        line = ""
        while "certifying" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        time.sleep(0.5)  # inside the long training loop
        proc.send_signal(getattr(signal, sig))
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == code, rest
    assert rest.strip().splitlines()[-1].startswith("Error: ")
    assert list(tmp_path.iterdir()) == []


def _compression_args(task: Path, method: str, *extra: str) -> list[str]:
    return [
        "certify",
        str(task / "final.safetensors"),
        "--arch",
        "mlp",
        "--arch-kwargs",
        '{"in_features": 6, "hidden": [8], "num_classes": 2}',
        "--data",
        str(task / "train.npz"),
        "--method",
        method,
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("quantize", ("--levels", "4,8")),
        ("subspace", ("--d", "20", "--levels", "4", "--subspace-epochs", "3")),
    ],
)
def test_compression_methods_report_and_artifact(
    task: Path, tmp_path: Path, method: str, extra: tuple[str, ...]
) -> None:
    art = tmp_path / "model.pbcm"
    result = CliRunner().invoke(
        cli, _compression_args(task, method, *extra, "--artifact", str(art), "--json")
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    res = doc["results"]
    assert res["method"] == method
    assert "decoded" in res["certified_classifier"]
    assert res["code_length_bits"] == 8 * art.stat().st_size
    assert sum(res["code_length_breakdown"].values()) == res["code_length_bits"]
    assert doc["inputs"]["artifact"]["bytes"] == art.stat().st_size
    from pacbound.bounds import bits_to_nats, occam_binomial

    expected = occam_binomial(
        res["errors"] / res["n"], kl=bits_to_nats(res["code_length_bits"]), n=400, delta=0.05
    )
    assert res["bound"] == expected.value


@pytest.mark.parametrize(
    ("method", "extra", "flag"),
    [
        ("quantize", ("--posterior", "diagonal"), "--posterior"),
        ("quantize", ("--init", "x.safetensors"), "--init"),
        ("gaussian", ("--levels", "4"), "--levels"),
        ("quantize", ("--posterior-optimizer", "adam"), "--posterior-optimizer"),
        ("subspace", ("--prior-augment-shift", "2"), "--prior-augment-shift"),
        ("gaussian", ("--subspace-lr-schedule", "cosine"), "--subspace-lr-schedule"),
    ],
)
def test_options_of_the_other_method_are_refused(
    task: Path, method: str, extra: tuple[str, ...], flag: str
) -> None:
    args = _compression_args(task, method, *extra)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2  # a usage error, like any option that does not apply
    assert result.stderr.startswith(f"Error: {flag} applies only with")
    assert len(result.stderr.strip().splitlines()) == 1


def test_prior_init_without_init_is_a_usage_error(task: Path, tmp_path: Path) -> None:
    args = _args(task, "--output", str(tmp_path / "r.json"))
    i = args.index("--init")
    del args[i : i + 2]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip() == (
        "Error: --prior init needs the initial weights: pass --init PATH (saved before "
        "training), or choose --prior zero or --prior data"
    )
    assert not (tmp_path / "r.json").exists()


def test_levels_below_two_and_bad_lists(task: Path) -> None:
    runner = CliRunner()
    one = runner.invoke(cli, _compression_args(task, "quantize", "--levels", "1"))
    assert one.exit_code == 3 and "Error:" in one.stderr
    bad = runner.invoke(cli, _compression_args(task, "subspace", "--d", "a,b"))
    assert bad.exit_code == 3 and "--d must be an integer" in bad.stderr


def test_vacuous_subspace_bound_exits_1_only_under_a_gate(task: Path) -> None:
    runner = CliRunner()
    args = _compression_args(
        task, "subspace", "--d", "70", "--levels", "256", "--subspace-epochs", "1"
    )
    plain = runner.invoke(cli, [*args, "--json"])
    assert plain.exit_code == 0, plain.stderr
    assert json.loads(plain.stdout)["results"]["verdict"]["non_vacuous"] is False
    gated = runner.invoke(cli, [*args, "--fail-if-vacuous"])
    assert gated.exit_code == 1
    assert "vacuous" in gated.stderr


class _FullDisk:
    """What os.statvfs reports for a file system with 100 KiB free."""

    f_bavail = 25
    f_frsize = 4096


def test_full_disk_is_reported_before_work(
    task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pacbound.io.files as files

    monkeypatch.setattr(files.os, "statvfs", lambda path: _FullDisk())
    result = CliRunner().invoke(cli, _args(task, "--output", str(tmp_path / "r.json")))
    assert result.exit_code == 3
    line = result.stderr.strip()
    assert line.startswith("Error: --output: only 0.1 MiB free on the disk holding")
    assert "\n" not in line
    assert list(tmp_path.iterdir()) == []


def test_probe_write_failure_is_reported_before_work(
    task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk whose statvfs looks fine but refuses writes (ENOSPC on the probe)."""
    import errno

    import pacbound.io.files as files

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", no_space)
    result = CliRunner().invoke(cli, _args(task, "--save-posterior", str(tmp_path / "p.st")))
    assert result.exit_code == 3
    assert result.stderr.strip() == (
        f"Error: --save-posterior: cannot write in {tmp_path} (No space left on device); "
        "choose another path"
    )
    assert list(tmp_path.iterdir()) == []


def test_posterior_too_large_for_the_free_space(
    task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 MiB + 100 bytes free passes the early check, not the posterior's 3·4 bytes/weight."""
    import pacbound.io.files as files

    class Tight:
        f_bavail = (1 << 20) + 100
        f_frsize = 1

    monkeypatch.setattr(files.os, "statvfs", lambda path: Tight())
    result = CliRunner().invoke(cli, _args(task, "--save-posterior", str(tmp_path / "p.st")))
    assert result.exit_code == 3
    assert "--save-posterior: only 1.0 MiB free" in result.stderr
    assert "about 1.0 MiB needed" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["gaussian", "subspace"])
def test_trained_weights_as_init_are_refused(task: Path, tmp_path: Path, method: str) -> None:
    """A prior (or θ₀) at the trained weights would be fitted to the data: exit 3."""
    final = str(task / "final.safetensors")
    extra = ("--d", "5", "--levels", "4") if method == "subspace" else ()
    args = [*_compression_args(task, method, *extra), "--init", final]
    args += ["--output", str(tmp_path / "r.json")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.stderr
    assert result.stderr.strip() == (
        "Error: --init holds exactly the checkpoint's trained weights; it must be the "
        "initialization saved BEFORE training (a prior or θ₀ fitted to the data would make "
        "the bound invalid)"
    )
    assert list(tmp_path.iterdir()) == []

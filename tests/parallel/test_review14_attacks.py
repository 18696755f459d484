"""Adversarial checks of the torchrun support (issue #14, review R14).

Each test starts real processes (gloo on CPU, one thread each) on the tiny task of
``tests/report/_tiny.py`` or a variant of it. A test that fails documents a hole in the
scale-out contract: the same certificate at any world size, every rank computing with the
same network, one ``Error:`` line and a documented exit code on every failure.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.cli.test_torchrun import (
    QUANTIZE,
    _env,
    _two_node_run,
    errors,
    run,
    standalone,
    worker_exit_codes,
)
from tests.report._tiny import make_task, model_and_data

pytestmark = pytest.mark.slow

#: A user architecture module (PKG.MOD:FACTORY); ``SIGN`` is what a second node's copy changes.
ARCH_MODULE = '''
import torch
from torch import nn

SIGN = {sign}


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return SIGN * self.body(x)


class NaNRows(Body):
    """NaN scores for a marked row (feature 5 above 100): fails alike on every rank that
    evaluates the first batch."""

    def forward(self, x):
        out = self.body(x)
        bad = (x[:, 5] > 100).unsqueeze(1)
        return torch.where(bad, torch.full_like(out, float("nan")), out)


class Normed(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def body():
    return Body()


def normed():
    return Normed()


def nan_rows():
    return NaNRows()
'''


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_task(tmp_path_factory.mktemp("review14"))
    renamed = {"1": "body.0", "3": "body.2"}  # the tiny MLP's layers inside Body
    weights = load_file(root / "final.safetensors")
    save_file(
        {f"{renamed[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in weights.items()},
        root / "body.safetensors",
    )
    torch.manual_seed(0)
    normed = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    save_file({k: v.contiguous() for k, v in normed.state_dict().items()}, root / "bn.safetensors")
    with np.load(root / "train.npz") as data:
        x, y = data["x"][:101].copy(), data["y"][:101]
    np.savez(root / "n101.npz", x=x, y=y)
    x[90, 5] = 1000.0  # row 90: in rank 1's shard of 2 (batch 16), in every rank's checks
    np.savez(root / "nan90.npz", x=x, y=y)
    x[90, 5], x[0, 5] = x[89, 5], 1000.0
    np.savez(root / "nan0.npz", x=x, y=y)
    return root


def _body_args(task: Path, data: str = "n101.npz", factory: str = "body") -> list[str]:
    return [
        str(task / "body.safetensors"),
        "--arch",
        f"r14arch:{factory}",
        "--data",
        str(task / data),
    ]


def _arch_dir(root: Path, sign: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "r14arch.py").write_text(ARCH_MODULE.format(sign=sign))
    return root  # the working directory of a run: ``-m`` puts it first on sys.path


def test_three_processes_stream_heldout_unlabeled_give_the_plain_results(
    task: Path, tmp_path: Path
) -> None:
    """n = 101 (not a multiple of 3 nor of the batch 16), a streamed .npy folder, a held-out
    set of 37 and 5 unlabeled inputs (fewer than one batch: ranks 1 and 2 get none)."""
    folder = tmp_path / "stream"
    folder.mkdir()
    with np.load(task / "n101.npz") as data:
        np.save(folder / "x.npy", data["x"])
        np.save(folder / "y.npy", data["y"])
        np.savez(tmp_path / "heldout.npz", x=data["x"][:37] + 0.1, y=data["y"][:37])
        np.savez(tmp_path / "unlabeled.npz", x=data["x"][50:55] - 0.1, y=data["y"][50:55])
    args = model_and_data(task)
    args[args.index(str(task / "train.npz"))] = str(folder)
    args += ["--heldout", str(tmp_path / "heldout.npz"), "--unlabeled"]
    args += [str(tmp_path / "unlabeled.npz"), *QUANTIZE, "--batch-size", "16"]
    reports = {}
    for world in (1, 3):
        out = tmp_path / f"w{world}.json"
        cmd = standalone(world) if world > 1 else [sys.executable, "-m", "pacbound"]
        done = run([*cmd, "certify", *args, "-o", str(out)])
        assert done.returncode == 0, done.stderr
        reports[world] = json.loads(out.read_text())
    assert reports[3]["results"] == reports[1]["results"]
    assert reports[3]["results"]["n"] == 101
    assert reports[3]["results"]["heldout"]["n"] == 37
    assert reports[3]["results"]["checkpoint"]["disagreement"]["inputs"] == 5


def test_nan_in_one_ranks_shard_ends_every_rank_with_exit_4(task: Path, tmp_path: Path) -> None:
    """Row 90 of 101 (rank 1's shard only) gives NaN scores: every rank exits 4, one line."""
    cwd = _arch_dir(tmp_path / "run")
    args = _body_args(task, "nan90.npz", "nan_rows")
    args += [*QUANTIZE, "--batch-size", "16", "--allow-nondeterministic"]
    done = run([*standalone(2), "certify", *args, "-o", "report.json"], cwd=cwd)
    assert worker_exit_codes(done.stderr) == [4, 4]
    assert errors(done.stderr) == [
        "Error: the network produced NaN/Inf outputs during risk evaluation [rank 1 of 2]"
    ]
    assert not (cwd / "report.json").exists()


def test_a_failure_every_rank_finds_alike_in_the_run_ends_every_rank_alike(
    task: Path, tmp_path: Path
) -> None:
    """A check inside the method's run that every rank makes alike (here: NaN scores for row
    90, refused by every rank as a non-deterministic model, exit 3) ends every rank with the
    same code and no file; each rank prints its own line, rank 1's tagged (docs/scaling.md:
    the ranks do not compare notes inside a failing step)."""
    cwd = _arch_dir(tmp_path / "run")
    args = [*_body_args(task, "nan90.npz", "nan_rows"), *QUANTIZE, "--batch-size", "16"]
    done = run([*standalone(2), "certify", *args, "-o", "report.json"], cwd=cwd)
    assert worker_exit_codes(done.stderr) == [3, 3]
    lines = errors(done.stderr)
    tagged = [line for line in lines if line.endswith(" [rank 1 of 2]")]
    assert len(lines) == 2 and len(tagged) == 1, lines
    assert set(lines) - set(tagged) == {tagged[0].removesuffix(" [rank 1 of 2]")}, lines
    assert not (cwd / "report.json").exists()


def test_an_architecture_module_that_differs_between_nodes_is_refused(
    task: Path, tmp_path: Path
) -> None:
    """PKG.MOD:FACTORY read from each node's own copy of the module: node 1's copy negates
    the scores. The checkpoint, data and command line agree, so before the fix the run
    certified a chimera (rank 0's shard counted with one network, rank 1's with another): 37
    errors in the report of a model that makes 0. Now the module's sha256 is agreed too."""
    cwds = (_arch_dir(tmp_path / "node0", 1), _arch_dir(tmp_path / "node1", -1))
    args = ["certify", *_body_args(task), *QUANTIZE, "--batch-size", "16", "-o", "r.json"]
    nodes = _two_node_run(cwds, args)
    codes = sorted(code for n in nodes for code in worker_exit_codes(n.stderr))
    reports = [json.loads((c / "r.json").read_text()) for c in cwds if (c / "r.json").exists()]
    assert reports == [], [r["results"]["errors"] for r in reports]
    assert codes == [3, 3]
    lines = [line for n in nodes for line in errors(n.stderr)]
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "Error: the architecture module r14arch (sha256) differs between ranks: rank 1 has '"
    ), lines


def test_an_output_unwritable_on_rank_0s_node_only(task: Path, tmp_path: Path) -> None:
    """``-o out/r.json`` where ``out`` is a file on node 0 (rank 0's, the writer) and a folder
    on node 1: refused at start on every rank, one line, nothing written anywhere."""
    cwds = (tmp_path / "node0", tmp_path / "node1")
    for cwd in cwds:
        cwd.mkdir()
    (cwds[0] / "out").write_text("not a folder")
    (cwds[1] / "out").mkdir()
    args = ["certify", *model_and_data(task), *QUANTIZE, "-o", "out/r.json"]
    nodes = _two_node_run(cwds, args)
    codes = [code for n in nodes for code in worker_exit_codes(n.stderr)]
    assert len(codes) == 2 and codes[0] == codes[1] and codes[0] in (2, 3), codes
    lines = [line for n in nodes for line in errors(n.stderr)]
    assert len(lines) == 1 and "--output" in lines[0], lines
    assert list((cwds[1] / "out").iterdir()) == []


def test_nan_scores_in_the_first_rows_are_a_numerical_failure(task: Path, tmp_path: Path) -> None:
    """One process (not a scale-out matter, found here): NaN scores for row 0 make the
    batch-independence probe crash (``torch.allclose`` with a NaN atol: exit 5, 'internal
    error') instead of a numerical failure (exit 4) or a refused model (exit 3)."""
    cwd = _arch_dir(tmp_path / "run")
    args = [*_body_args(task, "nan0.npz", "nan_rows"), *QUANTIZE, "--batch-size", "16"]
    done = run([sys.executable, "-m", "pacbound", "certify", *args], cwd=cwd)
    assert done.returncode in (3, 4), done.stderr
    assert "internal error" not in done.stderr


def test_subspace_qat_artifact_of_two_processes_verifies_at_three(
    task: Path, tmp_path: Path
) -> None:
    """Data-parallel subspace training and QAT (trained weights may differ from one process's),
    n = 101, batches 15/16: the report of 2 processes is re-derived exactly by 3 and by 1."""
    report = tmp_path / "r.json"
    args = ["certify", *model_and_data(task), "--init", str(task / "init.safetensors")]
    args[args.index(str(task / "train.npz"))] = str(task / "n101.npz")
    args += ["--method", "subspace", "--d", "20", "--levels", "8", "--subspace-epochs", "2"]
    args += ["--subspace-batch-size", "15", "--qat-steps", "3", "--batch-size", "16"]
    args += ["--threads", "1", "--quiet", "-o", str(report), "--artifact", str(tmp_path / "a")]
    done = run([*standalone(2), *args])
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["environment"]["world_size"] == 2
    for cmd in (standalone(3), [sys.executable, "-m", "pacbound"]):
        verified = run([*cmd, "verify", str(report), "--threads", "1", "--json"])
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["agree"] is True


def test_sigterm_to_torchrun_leaves_no_file(task: Path, tmp_path: Path) -> None:
    """SIGTERM to the launcher mid-run: every rank ends 143, nothing is written."""
    args = ["certify", *model_and_data(task), "--init", str(task / "init.safetensors")]
    args += ["--mc-passes", "20000", "--threads", "1", "-o", "r.json"]
    args += ["--save-posterior", "q.safetensors"]
    with subprocess.Popen(
        [*standalone(2), *args], env=_env(), stderr=subprocess.PIPE, text=True, cwd=tmp_path
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # both ranks are past their start checks
            if line.startswith("certifying"):
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        proc.wait(timeout=60)
    assert proc.returncode != 0
    assert all("terminated (SIGTERM" in line for line in errors(rest)), errors(rest)
    assert list(tmp_path.iterdir()) == []  # no report, posterior or temporary file


def test_batchnorm_training_of_two_processes_where_one_process_trains(
    task: Path, tmp_path: Path
) -> None:
    """Subspace training of a BatchNorm model, n = 101 in mini-batches of 33: the last one
    has 2 rows, which one process trains on; split 1/1 between two ranks, BatchNorm in train
    mode refused a batch of one row (exit 5, 'internal error', on both ranks). No rank's share
    of a batch of two rows or more may be a single row."""
    cwd = _arch_dir(tmp_path / "run")
    args = [str(task / "bn.safetensors"), "--arch", "r14arch:normed", "--data"]
    args += [str(task / "n101.npz"), "--method", "subspace", "--d", "20", "--levels", "8"]
    args += ["--subspace-epochs", "1", "--subspace-batch-size", "33", "--batch-size", "16"]
    args += ["--threads", "1", "--quiet", "-o", "r.json"]
    plain = run([sys.executable, "-m", "pacbound", "certify", *args], cwd=cwd)
    assert plain.returncode == 0, plain.stderr
    done = run([*standalone(2), "certify", *args], cwd=cwd)
    assert done.returncode == 0, errors(done.stderr)
    assert json.loads((cwd / "r.json").read_text())["environment"]["world_size"] == 2

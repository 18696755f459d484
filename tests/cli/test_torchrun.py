"""``torchrun … -m pacbound``: the same certificate as a plain run, rank 0 alone writes and
prints, bad input refused on every rank, and a failure or a kill ends the whole run.

Every run here starts real processes (``python -m torch.distributed.run``, gloo on CPU, one
thread each) on the tiny task of ``tests/report/_tiny.py``; each test takes well under a
minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pacbound.certify.registry import METHODS
from pacbound.cli.main import cli
from pacbound.verify.fields import compare_results
from tests.parallel.test_gloo import free_port
from tests.report._tiny import make_task, model_and_data

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 90
QUANTIZE = ("--method", "quantize", "--levels", "4,8", "--threads", "1", "--quiet")


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("torchrun"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--max-restarts", "0", *launcher]


def standalone(nproc: int = 2) -> list[str]:
    return torchrun("--standalone", "--nproc-per-node", str(nproc), "-m", "pacbound", "--")


def two_nodes(port: int, node_rank: int, *conf: str) -> list[str]:
    return torchrun(
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "pacbound-test",
        "--node-rank",
        str(node_rank),
        *conf,
        "-m",
        "pacbound",
        "--",
    )


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Error:")]


def worker_exit_codes(stderr: str) -> list[int]:
    """The worker exit codes torchrun lists in its failure summary."""
    return [
        int(line.split(":")[1].split()[0]) for line in stderr.splitlines() if "exitcode  :" in line
    ]


@pytest.fixture(scope="module")
def plain_report(task: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    args = ["certify", *model_and_data(task), *QUANTIZE, "-o", str(out / "report.json")]
    result = CliRunner().invoke(cli, [*args, "--artifact", str(out / "model.pbc")])
    assert result.exit_code == 0, result.output
    return out / "report.json"


def test_two_processes_give_the_plain_certificate(
    task: Path, plain_report: Path, tmp_path: Path
) -> None:
    report, artifact = tmp_path / "report.json", tmp_path / "model.pbc"
    cmd = [*standalone(2), "certify", *model_and_data(task), *QUANTIZE, "--json"]
    done = run([*cmd, "-o", str(report), "--artifact", str(artifact)])
    assert done.returncode == 0, done.stderr
    plain = json.loads(plain_report.read_text())
    doc = json.loads(report.read_text())
    assert doc["results"] == plain["results"]
    assert doc["results_sha256"] == plain["results_sha256"]
    assert artifact.read_bytes() == (plain_report.parent / "model.pbc").read_bytes()
    env = doc["environment"]
    assert (env["world_size"], env["backend"], env["launcher"]) == (2, "gloo", "torchrun")
    assert env["rank_devices"] == ["cpu", "cpu"]
    assert plain["environment"]["world_size"] == 1
    assert plain["environment"]["launcher"] == "none"
    assert json.loads(done.stdout) == doc  # one JSON document: rank 0 alone prints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pbc", "report.json"]
    # verify (one process) accepts the report of two: the world is never compared
    verified = CliRunner().invoke(cli, ["verify", str(report), "--json"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["agree"] is True


def test_verify_under_torchrun(plain_report: Path) -> None:
    done = run([*standalone(2), "verify", str(plain_report), "--json", "--threads", "1"])
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["agree"] is True and outcome["report"] == str(plain_report)
    assert errors(done.stderr) == []


def test_marginal_is_replicated_on_every_rank(task: Path, tmp_path: Path) -> None:
    """--method marginal (one dense job, computed whole by every rank; the checkpoint's
    held-out count is sharded): two processes give the plain report's results up to the
    method's ``float_rel_tol`` (torchrun sets OMP_NUM_THREADS=1, and LAPACK's rounding
    depends on the BLAS thread count), integers and strings exactly."""
    args = ["certify", *model_and_data(task), "--method", "marginal", "--is-samples", "100"]
    args += ["--num-classes", "2"]  # C fixed before the labels are read
    args += ["--heldout", str(task / "test.npz"), "--threads", "1", "--quiet"]
    plain = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "plain.json")])
    assert plain.exit_code == 0, plain.output
    done = run([*standalone(2), *args, "-o", str(tmp_path / "two.json")])
    assert done.returncode == 0, done.stderr
    two = json.loads((tmp_path / "two.json").read_text())
    one = json.loads((tmp_path / "plain.json").read_text())["results"]
    marginal = METHODS["marginal"]  # compared as verify compares them
    skip = tuple(marginal.choice_fields)
    checks = compare_results(one, two["results"], skip=skip, rel_tol=marginal.float_rel_tol)
    assert [c.field for c in checks if not c.agree] == []
    assert two["results"]["bound"] == pytest.approx(one["bound"], rel=1e-12)
    assert two["environment"]["world_size"] == 2
    assert two["results"]["heldout"]["checkpoint_error"] is not None


def test_compress_under_torchrun_writes_the_plain_artifact(task: Path, tmp_path: Path) -> None:
    args = ["compress", *model_and_data(task), *QUANTIZE, "--json"]
    plain = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "plain.pbc")])
    assert plain.exit_code == 0, plain.output
    done = run([*standalone(2), *args, "-o", str(tmp_path / "two.pbc")])
    assert done.returncode == 0, done.stderr
    two = json.loads(done.stdout)  # one document: rank 0 alone prints
    assert two["results"] == json.loads(plain.stdout)["results"]
    assert (tmp_path / "two.pbc").read_bytes() == (tmp_path / "plain.pbc").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.pbc", "two.pbc"]


def _two_node_run(
    cwds: tuple[Path, Path], args: list[str], *conf: str
) -> list[subprocess.CompletedProcess[str]]:
    port = free_port()
    procs = [
        subprocess.Popen(
            [*two_nodes(port, node, *conf), *args],
            cwd=cwds[node],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_two_nodes_on_localhost_give_the_plain_certificate(
    task: Path, plain_report: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    args = ["certify", *model_and_data(task), *QUANTIZE, "-o", str(report)]
    nodes = _two_node_run((tmp_path, tmp_path), args)
    assert [n.returncode for n in nodes] == [0, 0], [n.stderr for n in nodes]
    doc = json.loads(report.read_text())
    assert doc["results"] == json.loads(plain_report.read_text())["results"]
    assert doc["environment"]["world_size"] == 2


def test_different_data_on_two_nodes_is_refused(task: Path, tmp_path: Path) -> None:
    cwds = (tmp_path / "node0", tmp_path / "node1")
    with np.load(task / "train.npz") as data:
        x, y = data["x"], data["y"].copy()
    for node, cwd in enumerate(cwds):
        cwd.mkdir()
        y[0] = node  # the same file name, another label on node 1
        np.savez(cwd / "train.npz", x=x, y=y)
    args = ["certify", *model_and_data(task), *QUANTIZE, "-o", "report.json"]
    args[args.index(str(task / "train.npz"))] = "train.npz"  # relative: each node's own
    nodes = _two_node_run(cwds, args)
    assert [n.returncode for n in nodes] == [1, 1]  # torchrun: any failed worker
    lines = [line for n in nodes for line in errors(n.stderr)]
    assert len(lines) == 1, lines  # printed once, by rank 0
    assert lines[0].startswith(
        "Error: the data file train.npz (sha256) differs between ranks: rank 1 has '"
    )
    assert sorted(code for n in nodes for code in worker_exit_codes(n.stderr)) == [3, 3]
    assert not any((cwd / "report.json").exists() for cwd in cwds)


def test_a_world_larger_than_the_data_is_refused(task: Path, tmp_path: Path) -> None:
    with np.load(task / "train.npz") as data:
        np.savez(tmp_path / "one.npz", x=data["x"][:1], y=data["y"][:1])
    args = ["certify", *model_and_data(task), *QUANTIZE, "-o", str(tmp_path / "r.json")]
    args[args.index(str(task / "train.npz"))] = str(tmp_path / "one.npz")
    done = run([*standalone(2), *args])
    assert done.returncode == 1
    assert errors(done.stderr) == [
        "Error: the world size 2 is larger than --data (n = 1): every rank needs at least one "
        "example; start at most 1 processes in all"
    ]
    assert worker_exit_codes(done.stderr) == [3, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz"]


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


def _rank_of(pid: int) -> int | None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [e[5:] for e in environ if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_killing_one_rank_ends_every_rank_without_a_report(task: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    args = ["certify", *model_and_data(task), "--init", str(task / "init.safetensors")]
    args += ["--mc-passes", "20000", "--threads", "1", "-o", str(report)]
    with subprocess.Popen(
        [*standalone(2), *args], env=_env(), stderr=subprocess.PIPE, text=True, cwd=tmp_path
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # rank 0's first line: both ranks are past their checks
            if line.startswith("certifying"):
                break
        victim = next(p for p in _children(proc.pid) if _rank_of(p) == 1)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        rest = proc.stderr.read()
        proc.wait(timeout=RUN_TIMEOUT_S)
    assert time.monotonic() - killed < 40
    assert proc.returncode == 1
    codes = worker_exit_codes(rest)
    assert -9 in codes and len(codes) == 2
    assert codes[0] == 143 or codes[1] == 143  # rank 0: peer lost or SIGTERM
    assert list(tmp_path.iterdir()) == []  # no report, no temporary file


def test_a_node_that_never_joins_times_out(task: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = [*two_nodes(port, 0, "--rdzv-conf", "join_timeout=3"), "certify", "--help"]
    start = time.monotonic()
    done = run(cmd, cwd=tmp_path)
    assert done.returncode == 1
    assert "RendezvousTimeoutError" in done.stderr
    assert time.monotonic() - start < 45

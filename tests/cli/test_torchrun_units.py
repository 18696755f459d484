"""The CLI's torchrun rules without starting processes: which rank prints an error, the exit
code of a lost peer, each rank's device, a muted terminal."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import click
import pytest
import torch
from click.testing import CliRunner

import pacbound.io
from pacbound.cli.main import PacboundGroup, cli
from pacbound.cli.parallel_run import check_world_size, rank_device
from pacbound.cli.terminal import Terminal
from pacbound.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_TERMINATED, UsageError
from pacbound.parallel import SharedError


def torchrun_env(rank: int, size: int, local: int, local_size: int = 1) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(size),
        "LOCAL_RANK": str(local),
        "LOCAL_WORLD_SIZE": str(local_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }


@pytest.fixture(autouse=True)
def _keep_signals() -> Iterator[None]:
    """A torchrun worker's error path leaves SIGTERM ignored (it is about to exit); give this
    test process its handlers back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@click.group(cls=PacboundGroup)
def fake() -> None:
    """A group whose commands fail on purpose."""


@fake.command("shared")
def _shared() -> None:
    raise SharedError("the data file x.npz (sha256) differs", exit_code=EXIT_BAD_INPUT)


@fake.command("peer")
def _peer() -> None:
    raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [::1]:1")


def test_a_usage_error_is_printed_once_per_node() -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["certify", "--no-such"], env=torchrun_env(2, 4, 0))
    assert first.exit_code == 2
    assert first.stderr.startswith("Error: No such option '--no-such'")
    assert first.stderr.rstrip().endswith("[rank 2 of 4]")
    other = runner.invoke(cli, ["certify", "--no-such"], env=torchrun_env(3, 4, 1))
    assert (other.exit_code, other.stderr) == (2, "")


def test_a_shared_error_is_printed_by_rank_0_only() -> None:
    runner = CliRunner()
    zero = runner.invoke(fake, ["shared"], env=torchrun_env(0, 2, 0))
    assert zero.exit_code == EXIT_BAD_INPUT
    assert zero.stderr == "Error: the data file x.npz (sha256) differs\n"
    one = runner.invoke(fake, ["shared"], env=torchrun_env(1, 2, 1))
    assert (one.exit_code, one.stderr) == (EXIT_BAD_INPUT, "")


def test_a_lost_peer_is_exit_6_under_torchrun_only() -> None:
    runner = CliRunner()
    lost = runner.invoke(fake, ["peer"], env=torchrun_env(1, 2, 1))
    assert lost.exit_code == EXIT_TERMINATED
    assert lost.stderr.startswith(
        "Error: rank 1 stopped during a collective: another rank failed, was killed or timed out"
    )
    assert lost.stderr.rstrip().endswith("[rank 1 of 2]")
    plain = CliRunner().invoke(fake, ["peer"])
    assert plain.exit_code == EXIT_INTERNAL
    assert plain.stderr.startswith("Error: internal error (RuntimeError")


def _fake_resolve(device: str | None) -> torch.device:
    return torch.device("cuda" if device is None else device)


def test_each_rank_gets_its_local_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacbound.io, "resolve_device", _fake_resolve)
    for name, value in torchrun_env(3, 4, 1, local_size=2).items():
        monkeypatch.setenv(name, value)
    assert rank_device("cuda") == torch.device("cuda:1")
    assert rank_device(None) == torch.device("cuda:1")
    assert rank_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="each rank uses cuda:LOCAL_RANK; give --device cuda"):
        rank_device("cuda:0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert rank_device("cuda:0") == torch.device("cuda:0")  # one process per node: as given
    monkeypatch.delenv("RANK")
    assert rank_device("cuda") == torch.device("cuda")  # a plain run


def test_no_world_size_check_in_one_process() -> None:
    check_world_size({"--data": 0})  # the loaders refuse empty sets; nothing to add here


def test_a_muted_terminal_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    term = Terminal(mute=True)
    term.info("info")
    term.warn("warning")
    term.line("result")
    assert capsys.readouterr() == ("", "")
    assert term.quiet and not term.show_progress
    Terminal().warn("shown")
    assert "Warning: shown" in capsys.readouterr().err


def test_one_process_commands_run_on_rank_0_only() -> None:
    args = ["bound", "--risk", "0.1", "--n", "1000", "--delta", "0.05", "--kl", "5"]
    zero = CliRunner().invoke(cli, args, env=torchrun_env(0, 2, 0))
    plain = CliRunner().invoke(cli, args)
    assert zero.exit_code == plain.exit_code == 0
    assert zero.stdout == plain.stdout and "0." in plain.stdout
    other = CliRunner().invoke(cli, args, env=torchrun_env(1, 2, 1))
    assert (other.exit_code, other.stdout, other.stderr) == (0, "", "")


def test_only_d_needs_the_double_dash() -> None:
    """torchrun's parser takes an abbreviation of its own options anywhere on the line unless
    ``--`` follows ``-m pacbound`` (docs/scaling.md): today only ``--d`` is one."""
    from torch.distributed.run import get_args_parser

    from pacbound.cli.certify_cmd import certify
    from pacbound.cli.compress_cmd import compress
    from pacbound.cli.verify_cmd import verify

    theirs = [s for action in get_args_parser()._actions for s in action.option_strings]
    ours = {o for c in (certify, compress, verify) for p in c.params for o in p.opts}
    assert sorted(o for o in ours if any(t.startswith(o) for t in theirs)) == ["--d"]

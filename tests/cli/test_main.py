"""The command group: signals end a run with the documented exit codes, whatever was running."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: A child process with one extra command that signals itself while executing source text
#: through ``exec`` (as libraries do at run time) and then waits to be interrupted.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import click
    from pacbound.cli.main import cli

    @cli.command("selfsignal")
    def selfsignal():
        exec("os.kill(os.getpid(), signal.{sig})\\nfor _ in range(100):\\n    time.sleep(0.05)")
        print("not interrupted")

    cli.main(args=["selfsignal"], prog_name="pacbound")
    """
)


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_inside_exec_of_source_text_keeps_the_exit_code(
    sig: str, code: int, tmp_path: Path
) -> None:
    """Run as ``python -m`` (like ``python -m pacbound``): CPython then ends the process by
    SIGINT at exit if a KeyboardInterrupt ever escaped an ``exec`` of source text, whatever
    exit code was asked for. pacbound raises its own exception type, so 130 stays 130."""
    (tmp_path / "selfsignal_child.py").write_text(CHILD.replace("{sig}", sig))
    result = subprocess.run(
        [sys.executable, "-m", "selfsignal_child"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")


def test_pacbound_usage_error_exits_2_with_one_line() -> None:
    """pacbound's own UsageError (an option that does not apply) is a usage error: exit 2."""
    from click.testing import CliRunner

    from pacbound.cli.main import PacboundGroup
    from pacbound.errors import UsageError

    group = PacboundGroup("t")

    @group.command("run")
    def run() -> None:
        raise UsageError("--x applies only with --y, and this run has no --y: drop --x")

    result = CliRunner().invoke(group, ["run"])
    assert result.exit_code == 2
    assert result.stderr == "Error: --x applies only with --y, and this run has no --y: drop --x\n"


def test_help_lists_inapplicable_options_as_usage_errors() -> None:
    from click.testing import CliRunner

    from pacbound.cli.main import cli

    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "2    usage error (unknown, missing, contradictory or inapplicable options)" in (
        result.stdout
    )

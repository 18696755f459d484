"""The thread count a report was made with: recorded in ``environment.torch_threads``, and
the count ``verify`` re-derives at unless ``--threads`` says otherwise (a data-dependent
prior is retrained bit for bit only at the count it was trained with)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from pacbound.cli.main import cli
from pacbound.report.document import recorded_threads
from tests.report._tiny import gaussian_report, make_task


@pytest.fixture
def restore_threads() -> Iterator[int]:
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("verify_threads"))


@pytest.fixture(scope="module")
def one_thread(task: Path) -> Path:
    before = torch.get_num_threads()
    try:
        return gaussian_report(
            task, task / "one", "--threads", "1", "--prior", "data", "--prior-epochs", "2"
        )
    finally:
        torch.set_num_threads(before)


def test_report_records_the_count_in_effect(
    task: Path, tmp_path: Path, restore_threads: int
) -> None:
    torch.set_num_threads(2)
    report = json.loads(gaussian_report(task, tmp_path).read_text())
    assert report["options"]["threads"] is None  # --threads not given ...
    assert report["environment"]["torch_threads"] == 2  # ... but the count is recorded


def test_verify_without_threads_uses_the_reports(one_thread: Path, restore_threads: int) -> None:
    assert json.loads(one_thread.read_text())["environment"]["torch_threads"] == 1
    torch.set_num_threads(2)
    result = CliRunner().invoke(cli, ["verify", str(one_thread), "--json"])
    assert result.exit_code == 0, result.stderr
    assert torch.get_num_threads() == 1


def test_verify_threads_given_wins(one_thread: Path, restore_threads: int) -> None:
    torch.set_num_threads(1)
    result = CliRunner().invoke(cli, ["verify", str(one_thread), "--threads", "2", "--json"])
    assert result.exit_code == 0, result.stderr
    assert torch.get_num_threads() == 2


def test_verify_help_names_the_default() -> None:
    result = CliRunner().invoke(cli, ["verify", "--help"])
    assert "recorded count" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ({"environment": {"torch_threads": 3}, "options": {"threads": 5}}, 3),
        ({"environment": {}, "options": {"threads": 5}}, 5),  # older reports: --threads
        ({"environment": {}, "options": {"threads": None}}, None),
        ({"environment": {"torch_threads": True}, "options": {}}, None),
        ({"environment": {"torch_threads": 0}, "options": {}}, None),
        ({}, None),
    ],
)
def test_recorded_threads(report: dict[str, Any], expected: int | None) -> None:
    assert recorded_threads(report) == expected


def test_a_recorded_count_torch_cannot_run_is_refused(one_thread: Path, tmp_path: Path) -> None:
    """torch's thread pool crashes the process (a segfault) at 10⁶ threads: a report whose
    environment says so ends in one line, exit 3, before any work."""
    doc = json.loads(one_thread.read_text())
    doc["environment"]["torch_threads"] = 10**6
    forged = one_thread.parent / "huge_threads.json"
    forged.write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["verify", str(forged)])
    assert result.exit_code == 3, result.output
    assert "torch_threads = 1000000, more than 1024" in result.stderr


def test_threads_option_above_the_limit_is_refused(task: Path) -> None:
    result = CliRunner().invoke(cli, ["verify", str(task / "none.json"), "--threads", "1000000"])
    assert result.exit_code == 3, result.output
    assert "--threads must be at most 1024, got 1000000" in result.stderr

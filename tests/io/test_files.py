"""Atomic output files: the user's umask decides their mode, and nothing partial is left."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacbound.errors import InvalidInputError
from pacbound.io.files import current_umask, write_atomic


@pytest.fixture
def umask() -> Iterator[None]:
    saved = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(saved)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_file_has_the_mode_of_the_umask(
    umask: None, tmp_path: Path, mask: int, mode: int
) -> None:
    # was 0o600 whatever the umask (tempfile.mkstemp's mode survived the rename)
    os.umask(mask)
    assert current_umask() == mask
    target = tmp_path / "report.json"
    write_atomic(target, b"{}")
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert target.read_bytes() == b"{}"
    # overwriting gives the same mode, and no temporary file stays beside it
    write_atomic(target, b"[]")
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_failed_write_leaves_nothing(umask: None, tmp_path: Path) -> None:
    target = tmp_path / "missing-folder" / "report.json"
    with pytest.raises(InvalidInputError, match=r"--output: could not write .*nothing was written"):
        write_atomic(target, b"{}")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_nothing(
    umask: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "plot.png", b"\x89PNG")
    assert list(tmp_path.iterdir()) == []

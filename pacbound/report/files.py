"""Atomic report files: checked before the long work, written all at once at the end."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pacbound.errors import InvalidInputError


def check_writable(path: Path, option: str = "--output") -> None:
    """Fail early (before minutes of work) if ``path`` cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InvalidInputError(f"{option} {path} is a directory; give a file name", param=option)
    if not parent.is_dir():
        raise InvalidInputError(
            f"{option}: the folder {parent} does not exist; create it first", param=option
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".pacbound-probe-", dir=parent)
    except OSError as exc:
        raise InvalidInputError(
            f"{option}: cannot write in {parent} ({exc.strerror}); choose another path",
            param=option,
        ) from None
    os.close(fd)
    os.unlink(probe)


def write_atomic(path: Path, data: bytes, option: str = "--output") -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    A failure (or an interrupt) leaves no partial file behind.
    """
    parent = path.parent if str(path.parent) else Path(".")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise InvalidInputError(
            f"{option}: could not write {path} ({exc.strerror}); nothing was written",
            param=option,
        ) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

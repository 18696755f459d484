"""Atomic output files (reports, posteriors, artifacts, plots): checked before the long work,
written all at once at the end.

Files are created with the permissions of an ordinary ``open(path, "w")``, 0o666 masked by
the process umask (0o644 under the common umask 0o022), not the 0o600 of
:func:`tempfile.mkstemp`, so that a report, posterior or plot can be shared like any other
output of the user's tools.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pacbound.errors import InvalidInputError

#: Free space every output needs at least (reports are kilobytes; this leaves headroom).
MIN_FREE_BYTES = 1 << 20


def check_free_space(path: Path, needed_bytes: int, option: str = "--output") -> None:
    """Fail early if the file system holding ``path`` has less than ``needed_bytes`` free."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        stats = os.statvfs(parent)
    except (OSError, AttributeError):  # no statvfs (Windows): the probe write still runs
        return
    free = stats.f_bavail * stats.f_frsize
    if free < needed_bytes:
        raise InvalidInputError(
            f"{option}: only {free / 2**20:.1f} MiB free on the disk holding {parent}, "
            f"about {needed_bytes / 2**20:.1f} MiB needed; free some space or choose "
            "another path",
            param=option,
        )


def check_writable(
    path: Path, option: str = "--output", needed_bytes: int = MIN_FREE_BYTES
) -> None:
    """Fail early (before minutes of work) if ``path`` cannot be written: a missing folder,
    a directory in the way, no permission, or a full disk (free space is checked, and a
    probe file of up to 64 KiB is written and synced)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InvalidInputError(f"{option} {path} is a directory; give a file name", param=option)
    if not parent.is_dir():
        raise InvalidInputError(
            f"{option}: the folder {parent} does not exist; create it first", param=option
        )
    check_free_space(path, needed_bytes, option)
    probe: str | None = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".pacbound-probe-", dir=parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"\0" * min(needed_bytes, 1 << 16))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise InvalidInputError(
            f"{option}: cannot write in {parent} ({exc.strerror or exc}); choose another path",
            param=option,
        ) from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once (the only portable way)
    os.umask(mask)
    return mask


def _set_mode(fd: int, name: str, mode: int) -> None:
    if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
        os.fchmod(fd, mode)
    else:
        os.chmod(name, mode)


def write_atomic(path: Path, data: bytes, option: str = "--output") -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    A failure (or an interrupt) leaves no partial file behind. The file gets mode
    0o666 & ~umask, as a plain ``open(path, "w")`` would give it.
    """
    parent = path.parent if str(path.parent) else Path(".")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as handle:
            _set_mode(handle.fileno(), tmp, 0o666 & ~current_umask())  # mkstemp gave 0o600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise InvalidInputError(
            f"{option}: could not write {path} ({exc.strerror or exc}); nothing was written",
            param=option,
        ) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

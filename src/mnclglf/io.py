"""Atomic file writes: nothing half-written is ever left where DVC would cache it.

The new content is flushed to disk (file, then after the rename the folder) so that a
power cut leaves the old file or the new one, never an empty one; a full disk leaves
the old file and says so in one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnclglf.errors import UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path | str, previous: Path | str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it over ``final`` only on success.

    With ``previous``, the file that ``final`` held is first renamed there: the last two
    versions stay on disk, so an unreadable newest one still leaves the one before it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from other users
    try:
        yield tmp_path
        fsync_file(tmp_path)
        if previous is not None and final.exists():
            os.replace(final, previous)
        os.replace(tmp_path, final)
        fsync_dir(final.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            kept = "the previous file is kept" if final.exists() else "nothing was written"
            raise UserError(f"{final}: no space left on device while writing it; {kept}; free some "
                            f"space and rerun") from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_temporaries(folder: Path | str) -> None:
    """Delete what a killed :func:`atomic_path` left in ``folder`` (SIGKILL runs no clean-up);
    call it only where no other writer works in the folder (a DVC stage's own output)."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s content to disk (a rename alone may reach the disk before the data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (the rename itself) to disk; a no-op where it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # file systems that cannot sync a folder
            raise
    finally:
        os.close(fd)


def write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def link_or_copy(src: Path | str, dst: Path | str) -> None:
    """Put ``src``'s content at ``dst`` atomically: a hard link (no second copy on disk), or a copy
    where the two paths are on different file systems."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

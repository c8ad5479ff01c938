"""File-system primitives every layer uses: owner-only modes, directory fsync, exclusive locks.

The lowest layer (see docs/architecture.md): it imports nothing of pushlake's.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

FILE_MODE = 0o600  # every file pushlake creates holds some team's data, keys or positions
DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path) -> Path:
    """Create an empty owner-only file (refusing one that exists): a writer that opens it
    afterwards with O_TRUNC (pyarrow, ``open(..., "wb")``) keeps the mode, whatever the umask."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    return path


def try_lock(path: Path) -> int | None:
    """Take an exclusive flock, or return None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd

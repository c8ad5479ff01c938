"""Shared-memory files between the compactor and its projection processes.

A pipe costs a pickle, two kernel copies and an unpickle per byte (3.5 s of the compactor's CPU
and as much of the workers' for 3.4 GB of route arrays); a file in a tmpfs costs one write, and
the reader maps or reads it once. Files are owner-only and named after the compactor's pid
(``pushlake-<what>-<pid>-…``), so that those a killed compactor left behind are removed by the
next one (``remove_orphans``). A tmpfs that is full (containers give /dev/shm 64 MB), missing,
read-only or not ours is not an error: the caller sends that piece through the pipe.
"""
from __future__ import annotations

import os
import tempfile

from pushlake.procs import running

# PUSHLAKE_SHM_DIR names another tmpfs; PUSHLAKE_SHM_DIR="" sends everything through the pipe
DIR = os.environ.get("PUSHLAKE_SHM_DIR", "/dev/shm") or None
KINDS = ("routes", "bodies")


def new_file(directory: str, kind: str, owner: int) -> str:
    """A new empty owner-only file for ``kind`` (one of KINDS) of compactor ``owner``; its path.
    Raises OSError (the caller then uses the pipe)."""
    fd, path = tempfile.mkstemp(prefix=f"pushlake-{kind}-{owner}-", dir=directory)
    os.close(fd)
    return path


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_orphans(directory: str) -> int:
    """Remove the files of compactors that are gone; how many."""
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    n = 0
    for name in names:
        parts = name.split("-", 3)
        if len(parts) < 4 or parts[0] != "pushlake" or parts[1] not in KINDS or not parts[2].isdigit():
            continue
        if not running(int(parts[2])):
            try:
                os.unlink(os.path.join(directory, name))
                n += 1
            except OSError:
                pass
    return n

"""Process hygiene shared by the service's processes."""
from __future__ import annotations

import ctypes
import os
import select
import signal
import threading
import time


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (PR_SET_PDEATHSIG), so that a
    killed service leaves no receiver, compactor or projection process behind. No-op elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def set_name(name: str) -> None:
    """Name this process as ``ps``, ``top`` and /proc/<pid>/comm show it (15 bytes at most),
    so that an operator tells pushlake's processes apart. No-op elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def exit_with(pid: int) -> None:
    """Exit this process as soon as process ``pid`` is gone, from a watcher thread.

    For the compactor's projection processes: they are children of multiprocessing's forkserver,
    not of the compactor, and the forkserver lives as long as any of them does, so a killed
    compactor would otherwise leave them (and it) behind for good."""
    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
            select.select([fd], [], [])
        except ProcessLookupError:
            pass
        except (AttributeError, OSError):  # no pidfd here: poll
            while running(pid):
                time.sleep(0.5)
        os._exit(0)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def running(pid: int) -> bool:
    """Whether process ``pid`` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

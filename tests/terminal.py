"""A command on a real terminal (a pseudo-terminal): what a person at a keyboard gives it, for the
behaviours that depend on one (the shell's line editing and history, progress bars)."""
from __future__ import annotations

import fcntl
import os
import select
import subprocess
import termios
import time
from pathlib import Path

from tests.helpers import PUSHLAKE, ROOT


def _own_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is the pty (on its stdin), so
    that Ctrl-C typed there interrupts it as at a keyboard."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``pushlake ARGS`` with stdin, stdout and stderr on one pseudo-terminal. ``expect`` reads
    until a text shows; ``send`` types (``\\r`` is Enter, as a terminal sends it)."""

    def __init__(self, *args: str, env: dict | None = None, cwd: Path = ROOT):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen([*PUSHLAKE, *args], stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                     env={**os.environ, "TERM": "xterm", **(env or {})}, preexec_fn=_own_terminal)
        os.close(slave)
        self.seen = ""  # everything read so far
        self._unread = ""

    def _read(self, deadline: float) -> bool:
        r, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            return False
        try:
            chunk = os.read(self.master, 65536).decode(errors="replace")
        except OSError:  # EIO: the process closed the terminal
            return False
        self.seen += chunk
        self._unread += chunk
        return bool(chunk)

    def expect(self, text: str, timeout: float = 20) -> str:
        """What was written up to and including ``text`` (since the last expect)."""
        deadline = time.monotonic() + timeout
        while text not in self._unread:
            if not self._read(deadline):
                raise AssertionError(f"{text!r} not shown within {timeout}s; the terminal shows:\n{self.seen}")
        i = self._unread.index(text) + len(text)
        out, self._unread = self._unread[:i], self._unread[i:]
        return out

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait(self, timeout: float = 30) -> int:
        """The exit code, once everything the process wrote has been read."""
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass
        code = self.proc.wait(max(0.1, deadline - time.monotonic()))
        os.close(self.master)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        try:
            os.close(self.master)
        except OSError:
            pass


def run_on_terminal(*args: str, env: dict | None = None, timeout: float = 60) -> tuple[int, str]:
    """(exit code, everything shown) of a command run on a terminal to its end."""
    t = Terminal(*args, env=env)
    try:
        return t.wait(timeout), t.seen
    finally:
        t.close()

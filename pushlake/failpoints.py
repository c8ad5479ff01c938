"""Crash injection for tests: ``PUSHLAKE_FAILPOINT=name`` kills the process with SIGKILL when
execution reaches ``hit(name)``, so tests can prove recovery from a crash at that exact step."""
import os
import signal

_ACTIVE = set(filter(None, os.environ.get("PUSHLAKE_FAILPOINT", "").split(",")))


def hit(name: str) -> None:
    if name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)

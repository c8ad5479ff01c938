"""Fault injection for tests: ``PUSHLAKE_FAILPOINT=name`` kills the process with SIGKILL when
execution reaches ``hit(name)``, so tests can prove recovery from a crash at that exact step;
``name=eio`` raises an I/O error there instead (a machine fault the caller retries), and
``name=bug`` a ValueError (a fault the caller cannot retry away). Several: comma-separated."""
import errno
import os
import signal

_ACTIVE: dict[str, str] = {}
for _spec in filter(None, os.environ.get("PUSHLAKE_FAILPOINT", "").split(",")):
    _name, _, _mode = _spec.partition("=")
    _ACTIVE[_name] = _mode or "kill"


def hit(name: str) -> None:
    mode = _ACTIVE.get(name)
    if mode is None:
        return
    if mode == "eio":
        raise OSError(errno.EIO, f"injected I/O error at {name}")
    if mode == "bug":
        raise ValueError(f"injected error at {name}")
    os.kill(os.getpid(), signal.SIGKILL)

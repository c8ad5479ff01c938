"""Where the CPU goes while a benchmark loads ``pushlake serve``: cores per kind of process from
/proc, and py-spy profiles summarised as their top frames.

``ServeCpu`` classifies the process tree of one ``serve``: the receiver's event loop (the main
thread of each receiver process) and its other threads (log writer, tombstone publisher, the
status history), the compactor's main process, its projection workers (the forkserver and the
processes it forks), the Iceberg mirror (the compactor's spawned child), and the rest of the
tree (multiprocessing's resource trackers, the supervisor of ``--workers N``). Every kind counts
the CPU of children its processes have reaped (``cutime + cstime`` in /proc/<pid>/stat), so a
projection worker that exits between two samples is not lost. ``extra`` adds processes of the
benchmark's own (a query poller); the load generator is the benchmark process itself and the
children it has reaped (wrk); ``other`` is what the machine's /proc/stat busy time leaves
unexplained (whatever else runs on the machine).
"""
from __future__ import annotations

import collections
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import cmdline, descendants

CLK = os.sysconf("SC_CLK_TCK")
# the order of the kinds in reports
KINDS = ("receiver event loop", "receiver threads", "compactor", "projection workers", "iceberg mirror",
         "serve other", "load generator")


def _stat(path: str) -> list[str] | None:
    try:
        return Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def own_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads, dead ones included), seconds; 0 if gone."""
    f = _stat(f"/proc/{pid}/stat")
    return (int(f[11]) + int(f[12])) / CLK if f else 0.0


def reaped_cpu(pid: int) -> float:
    """CPU of the children a process has waited for (cutime + cstime), seconds."""
    f = _stat(f"/proc/{pid}/stat")
    return (int(f[13]) + int(f[14])) / CLK if f else 0.0


def thread_cpu(pid: int, tid: int) -> float:
    f = _stat(f"/proc/{pid}/task/{tid}/stat")
    return (int(f[11]) + int(f[12])) / CLK if f else 0.0


def tree_cpu(pid: int) -> float:
    """A process, its descendants and every child any of them reaped."""
    return sum(own_cpu(p) + reaped_cpu(p) for p in [pid, *descendants(pid)])


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat, idle and iowait excluded)."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _listen_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (IPv4 and IPv6)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                out.add(f[9])
    return out


def _holds(pid: int, inodes: set[str]) -> bool:
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    except OSError:
        pass
    return False


class ServeCpu:
    """Cumulative CPU seconds per kind of a ``serve`` tree (and of ``extra`` processes), from
    ``sample()``; ``cores(a, b)`` turns two samples into cores busy per kind over the window."""

    def __init__(self, serve_pid: int, port: int, extra: dict[str, int] | None = None) -> None:
        self.serve, self.port, self.extra = serve_pid, port, dict(extra or {})

    def _classify(self) -> dict[str, list[int]]:
        kids = _children(self.serve)
        trackers = [k for k in kids if "resource_tracker" in cmdline(k)]
        rest = [k for k in kids if k not in trackers]
        inodes = _listen_inodes(self.port)
        receivers = [k for k in rest if _holds(k, inodes)]
        others = [k for k in rest if k not in receivers]
        if not receivers:  # one worker: serve is the receiver itself
            receivers, supervisor = [self.serve], []
        else:
            supervisor = [self.serve]
        return {"receivers": receivers, "compactors": others, "trackers": trackers, "supervisor": supervisor}

    def sample(self) -> dict[str, float]:
        c = self._classify()
        out = collections.Counter({k: 0.0 for k in KINDS})
        for r in c["receivers"]:
            main = thread_cpu(r, r)
            out["receiver event loop"] += main
            out["receiver threads"] += own_cpu(r) - main
            out["serve other"] += reaped_cpu(r) if r != self.serve else 0.0
        for comp in c["compactors"]:
            out["compactor"] += own_cpu(comp)
            out["serve other"] += reaped_cpu(comp)
            for k in _children(comp):
                line = cmdline(k)
                kind = ("projection workers" if "forkserver" in line else
                        "iceberg mirror" if "spawn_main" in line else "serve other")
                out[kind] += tree_cpu(k)
        for p in c["trackers"]:
            out["serve other"] += tree_cpu(p)
        for p in c["supervisor"]:
            out["serve other"] += own_cpu(p)
        out["serve other"] += reaped_cpu(self.serve)
        for name, pid in self.extra.items():
            out[name] += tree_cpu(pid)
        ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        gen = ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime
        # the extra processes are our children too: reaped ones would count twice
        out["load generator"] += gen
        out["_busy"] = machine_busy()
        out["_wall"] = time.monotonic()
        return dict(out)

    @staticmethod
    def cores(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        """Cores busy per kind between samples a and b (1.0 = one core all the time), the
        machine's ("machine") and what no kind explains ("other")."""
        wall = b["_wall"] - a["_wall"]
        out = {k: max(0.0, (b[k] - a.get(k, 0.0)) / wall) for k in b if not k.startswith("_")}
        out["machine"] = (b["_busy"] - a["_busy"]) / wall
        out["other"] = max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine"))
        return out


def fmt_cores(c: dict[str, float]) -> str:
    keys = [k for k in c if k not in ("machine", "other")] + ["other", "machine"]
    return ", ".join(f"{k} {c[k]:.2f}" for k in keys if k in c and (c[k] >= 0.005 or k == "machine"))


# ---------------------------------------------------------------- py-spy

def py_spy() -> str | None:
    """The venv's py-spy (``make profile-tools``), else one on PATH, else None."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` of some processes for ``seconds`` (raw collapsed stacks, one file each),
    started now and running beside the load; ``wait()`` returns the files written."""

    def __init__(self, out_dir: Path, pids: dict[str, int], seconds: float, rate: int = 100,
                 subprocesses: tuple[str, ...] = ()) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is missing: `make profile-tools` (pip install -e '.[profile]')")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Path] = {}
        self.procs: list[subprocess.Popen] = []
        for name, pid in pids.items():
            out = out_dir / f"{name}.txt"
            cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
                   "--format", "raw", "--output", str(out), "--nonblocking", "--threads"]
            if name in subprocesses:
                cmd.append("--subprocesses")
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            self.files[name] = out

    def wait(self) -> dict[str, Path]:
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        return {k: v for k, v in self.files.items() if v.exists()}


def _function(frame: str) -> str:
    """``f (file.py:12)`` -> ``f (file.py)``."""
    head, sep, tail = frame.rpartition(":")
    return head + ")" if sep and tail[:-1].isdigit() else frame


def top_frames(raw: Path, n: int = 15) -> dict:
    """A py-spy raw profile (``frame;frame;... count`` per line, root first) summarised per thread
    (the first frame with ``--threads``; the process and the thread with ``--subprocesses``):
    samples on CPU (py-spy skips waiting threads without ``--idle``), and the functions with the
    most samples inclusive (anywhere in the stack, by function) and self (the leaf, by line), in % of
    the thread's."""
    threads: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    selfs: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    for line in Path(raw).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = stack.split(";")
        if frames[0].startswith("process ") and len(frames) > 1:
            thread, body = frames[0].split(":", 1)[0] + " " + frames[1], frames[2:]
        else:
            thread, body = frames[0], frames[1:]
        totals[thread] += k
        for f in {_function(x) for x in body}:
            threads[thread][f] += k
        if body:
            selfs[thread][body[-1]] += k
    out = {}
    for t, tot in totals.most_common():
        out[t] = {"samples": tot,
                  "inclusive": [(f, round(100 * c / tot, 1)) for f, c in threads[t].most_common(n)],
                  "self": [(f, round(100 * c / tot, 1)) for f, c in selfs[t].most_common(n)]}
    return out

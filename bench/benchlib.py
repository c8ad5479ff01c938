"""Helpers shared by bench/queries.py, bench/deletions.py and bench/freshness.py.

- ``Workdir``: where a benchmark puts its data: ``--workdir`` if given (kept afterwards, so a
  big lake built once can be reused), else a temporary directory under /tmp removed at the end.
- ``Server``: ``pushlake serve`` as a subprocess on a free port, with its teams created through
  the CLI (as an operator would) and each push key checked before the first push. Servers are
  ended by their own process group (bench.ingest.Processes), never by name.
- ``push_all``: an asyncio/aiohttp client that POSTs a list of bodies with N requests in flight
  and records, per request, when it was sent and when its answer arrived (monotonic clock).
- ``time_sql`` / ``interleaved``: query latencies measured round-robin over the variants being
  compared, so that noise from other work on the shared machine hits every variant alike.
- ``link_copy``: a cheap working copy of a lake (Parquet files and sealed log segments
  hard-linked, everything that can be written to copied).

The scripts put the project root first on sys.path before importing this module: run as
``python bench/queries.py``, the bench/ directory would otherwise shadow the ``queries`` and
``ingest`` packages with bench/queries.py and bench/ingest.py.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from bench.common import PUSHLAKE, ROOT
from bench.ingest import BenchError, Processes, free_port, http, wait_until

__all__ = ["BenchError", "Workdir", "Server", "PushResult", "push_all", "time_sql", "interleaved",
           "median", "pct", "link_copy", "dir_bytes", "ROOT"]


# ---------------------------------------------------------------- statistics

def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of xs; nan when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


# ---------------------------------------------------------------- files

class Workdir:
    """``path`` given: used and kept. None: a fresh directory under /tmp, removed by ``cleanup``."""

    def __init__(self, path: Path | None, prefix: str) -> None:
        self.temporary = path is None
        self.path = Path(tempfile.mkdtemp(prefix=prefix)) if path is None else Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)


def link_copy(src: Path, dst: Path) -> None:
    """Copy a data directory, hard-linking what pushlake never modifies in place: Parquet files
    (copy-on-write replaces them, vacuum only unlinks) and sealed log segments (every segment but
    the newest of each partition; the receiver appends to the newest). The catalog, team store,
    newest segments and everything else are real copies, so the copy can be written freely."""
    if dst.exists():
        shutil.rmtree(dst)
    newest: set[Path] = set()
    logdir = src / "log"
    if logdir.exists():
        for part in logdir.iterdir():
            segs = sorted(part.glob("*.log"))
            if segs:
                newest.add(segs[-1])

    def copy(s: str, d: str) -> None:
        p = Path(s)
        if (p.suffix == ".parquet" and "lake" in p.parts) or (p.suffix == ".log" and p not in newest):
            try:
                os.link(s, d)
                return
            except OSError:
                pass
        shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy, ignore=shutil.ignore_patterns("*.lock", ".lock"))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---------------------------------------------------------------- pushlake serve

class Server:
    """``pushlake serve`` on ``data`` with ``teams`` created first; ``keys[team]`` are push keys."""

    def __init__(self, data: Path, logdir: Path, teams: Iterable[str], compactor: bool,
                 extra_args: Sequence[str] = ()) -> None:
        self.data = Path(data)
        self.procs = Processes()
        self.keys: dict[str, str] = {}
        self.data.mkdir(parents=True, exist_ok=True)
        for t in teams:
            out = subprocess.run([PUSHLAKE, "teams", "create", t, "--data", str(self.data), "--json"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise BenchError(f"pushlake teams create {t} failed: {out.stderr.strip()}")
            self.keys[t] = json.loads(out.stdout)["pushApiKey"]
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [PUSHLAKE, "serve", "--data", str(self.data), "--port", str(port), "--min-free", "0",
               *(() if compactor else ("--no-compactor",)), *extra_args]
        print(f"$ {' '.join(cmd)}", flush=True)
        self.logfile = Path(logdir) / f"serve-{port}.log"
        self.proc = self.procs.start("pushlake", cmd, self.logfile)
        try:
            wait_until("pushlake serve", self.procs, self.proc, lambda: http("GET", self.url + "/health")[0] == 200,
                       timeout=60)
            for t, k in self.keys.items():
                # an empty object passes authentication and is refused (400) before anything is stored
                wait_until(f"pushlake (key of {t})", self.procs, self.proc,
                           lambda k=k: http("POST", self.url + "/push/trip/event", b"{}", self.headers(k))[0] == 400,
                           timeout=15)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def headers(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def child_pids(self) -> list[int]:
        try:
            return [int(x) for x in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]
        except OSError:
            return []

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self) -> None:
        self.procs.stop_all()


# ---------------------------------------------------------------- HTTP client

@dataclass
class PushResult:
    sent: list[float] = field(default_factory=list)      # time.monotonic() when the request was sent
    acked: list[float] = field(default_factory=list)     # when its answer arrived
    status: list[int] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def latencies_ms(self) -> list[float]:
        return [(a - s) * 1000 for s, a in zip(self.sent, self.acked)]

    def non_200(self) -> int:
        return sum(1 for s in self.status if s != 200)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
        return uvloop.new_event_loop
    except ImportError:
        return None


async def _push_all(url: str, items: Sequence[tuple[str, str, bytes]], concurrency: int,
                    timeout: float) -> PushResult:
    import aiohttp
    n = len(items)
    res = PushResult(sent=[0.0] * n, acked=[0.0] * n, status=[0] * n)
    it = iter(range(n))
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        async def worker() -> None:
            for i in it:
                path, key, body = items[i]
                hdr = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                res.sent[i] = time.monotonic()
                try:
                    async with s.post(url + path, data=body, headers=hdr) as r:
                        await r.read()
                        res.status[i] = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    res.status[i] = -1
                res.acked[i] = time.monotonic()
        res.started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.finished = time.monotonic()
    return res


def push_all(url: str, items: Sequence[tuple[str, str, bytes]], concurrency: int = 64,
             timeout: float = 120.0) -> PushResult:
    """POST every (path, push key, body) with ``concurrency`` requests in flight (closed loop)."""
    factory = _loop_factory()
    if factory is None:
        return asyncio.run(_push_all(url, items, concurrency, timeout))
    with asyncio.Runner(loop_factory=factory) as r:
        return r.run(_push_all(url, items, concurrency, timeout))


def loop_runner() -> asyncio.Runner:
    return asyncio.Runner(loop_factory=_loop_factory())


# ---------------------------------------------------------------- query timing

def time_sql(con: Any, sql: str, params: Any = None) -> tuple[float, list[tuple]]:
    """(milliseconds, rows) of one statement, rows fetched."""
    t = time.perf_counter()
    rows = con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()
    return (time.perf_counter() - t) * 1000, rows


def interleaved(variants: dict[str, Callable[[], Any]], runs: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each callable ``warmup`` times, then ``runs`` rounds of all of them in turn; return
    the milliseconds of every timed call per variant."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(runs):
        for k, fn in variants.items():
            t = time.perf_counter()
            fn()
            out[k].append((time.perf_counter() - t) * 1000)
    return out


def fmt_ms(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def rel(p: Path) -> str:
    try:
        return str(Path(p).relative_to(ROOT))
    except ValueError:
        return str(p)

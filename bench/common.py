"""What the benchmarks share: the result files, processes and servers, an HTTP client, timing.

Run the benchmarks as modules from the repository root (``.venv/bin/python -m bench.<name>``):
no module edits the import path, and none is named like a package it imports.

- Results: every benchmark writes ``<results dir>/<name>.json`` (``bench/results/`` unless
  ``--results-dir DIR`` or ``$PUSHLAKE_BENCH_RESULTS`` says otherwise, as the tests do so that
  they never touch the repository):
  ``{"name", "when", "git", "machine", "args", "rows": [{"metric", "unit", "peer", "peer_value",
  "pushlake_value", "ratio", "target", "met"}], "notes": [...]}`` plus whatever a benchmark adds.
  ``ratio`` is pushlake/peer (or peer/pushlake for "lower is better" metrics, so that > 1 always
  means pushlake is ahead), measured in the same run. ``bench/run_all.py`` turns the files into
  the table in bench/README.md.
- ``Processes``: servers started by a benchmark, each in its own session, ended by their own
  process group (never by name). ``Server``: ``pushlake serve`` on a free port, its teams created
  first through the CLI (as an operator would) and each push key checked before the first push.
- ``push_all``: an aiohttp client that POSTs a list of bodies with N requests in flight and
  records, per request, when it was sent and when its answer arrived (monotonic clock);
  ``open_loop``: requests started on a fixed schedule whatever the answers (a slow server shows
  as latency, not as fewer requests).
- ``interleaved``: latencies measured round-robin over the variants being compared, so that
  noise from other work on the shared machine hits every variant alike.
- ``Workdir``: ``--workdir`` if given (kept afterwards, so that a big lake built once can be
  reused), else a temporary directory removed at the end; ``link_copy``: a cheap working copy of
  a lake (Parquet files and sealed log segments hard-linked, everything writable copied).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RESULTS_ENV = "PUSHLAKE_BENCH_RESULTS"
PY = sys.executable                                         # the venv's python (make install)
PUSHLAKE = str(Path(sys.executable).with_name("pushlake"))  # its pushlake command
FIXTURES = ROOT / "tests" / "fixtures"


class BenchError(Exception):
    """A benchmark cannot go on (a server that does not start, a check that fails)."""


def run_main(main: Callable[[], int]) -> None:
    """A benchmark module's entry point: exit with ``main()``'s status; a BenchError ends it with
    one line on stderr and status 1 (the benchmark's ``finally`` blocks have cleaned up by then)."""
    try:
        code = main()
    except BenchError as e:
        print(f"bench.{Path(sys.argv[0]).stem}: {e}", file=sys.stderr)
        code = 1
    sys.exit(code)


# ---------------------------------------------------------------- results

def add_results_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--results-dir", type=Path, default=Path(os.environ.get(RESULTS_ENV) or RESULTS),
                    help=f"where the result file goes (default ${RESULTS_ENV} or bench/results)")


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def machine() -> dict:
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def row(metric: str, unit: str, peer: str, peer_value: float | None, pushlake_value: float | None,
        higher_is_better: bool = True, target: float | None = None) -> dict:
    """One comparison; ``target`` is the ratio the issue asks for (None: reported only)."""
    ratio = None
    if peer_value and pushlake_value:
        ratio = pushlake_value / peer_value if higher_is_better else peer_value / pushlake_value
    return {"metric": metric, "unit": unit, "peer": peer, "peer_value": peer_value,
            "pushlake_value": pushlake_value, "ratio": ratio, "target": target,
            "met": None if target is None or ratio is None else ratio >= target}


def write_result(name: str, rows: list[dict], args: dict | None = None, notes: list[str] | None = None,
                 results_dir: Path | None = None, extra: dict | None = None) -> Path:
    """Write ``<results_dir>/<name>.json`` (through a temporary file, so that a reader never sees
    half of one); ``extra`` adds top-level keys (a benchmark's detailed runs)."""
    out_dir = Path(results_dir or os.environ.get(RESULTS_ENV) or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.json"
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in (args or {}).items()}
    doc = {"name": name, "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "git": git_rev(), "machine": machine(), "args": args, "rows": rows, "notes": notes or [], **(extra or {})}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {rel(out)}", flush=True)
    return out


def print_rows(rows: list[dict]) -> None:
    print(f"{'metric':44} {'peer':22} {'peer value':>12} {'pushlake':>12} {'ratio':>7}  target")
    for r in rows:
        pv = "-" if r["peer_value"] is None else f"{r['peer_value']:.4g}"
        lv = "-" if r["pushlake_value"] is None else f"{r['pushlake_value']:.4g}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        tgt = "" if r["target"] is None else f">= {r['target']:.2f} {'met' if r['met'] else 'MISSED'}"
        print(f"{r['metric'][:44]:44} {r['peer'][:22]:22} {pv:>12} {lv:>12} {ratio:>7}  {tgt}")


def rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


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


def fmt_ms(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


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


# ---------------------------------------------------------------- /proc

def proc_kb(pid: int, field: str, file: str = "status") -> int:
    """A field of /proc/<pid>/status (VmHWM, VmRSS) or smaps_rollup (Pss), in kB; 0 if the
    process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Children of any thread of a process, and theirs, recursively."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids + [d for k in kids for d in descendants(k)]


def cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


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
        if (p.suffix == ".parquet" and ("lake" in p.parts or "files" in p.parts)) or (p.suffix == ".log" and p not in newest):
            try:
                os.link(s, d)
                return
            except OSError:
                pass
        shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy, ignore=shutil.ignore_patterns("*.lock", ".lock"))


def dir_bytes(path: Path) -> int:
    """Bytes on disk under ``path``, each file counted once however many hard links it has
    (the hive tree links the live files of ``files/``)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    seen: dict[tuple[int, int], int] = {}
    for p in path.rglob("*"):
        if p.is_file():
            s = p.stat()
            seen[(s.st_dev, s.st_ino)] = s.st_size
    return sum(seen.values())


# ---------------------------------------------------------------- processes and servers

class Processes:
    """Servers started by the benchmark; ``stop_all`` ends each one (and its process group) by id."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, cmd: list[str], log_path: Path) -> subprocess.Popen:
        with open(log_path, "wb") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, cwd=ROOT)
        self.procs.append((name, p, log_path))
        return p

    def log_tail(self, p: subprocess.Popen, lines: int = 20) -> str:
        for _, q, log_path in self.procs:
            if q is p and log_path.exists():
                return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop_all(self) -> None:
        for _, p, _ in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p, _ in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:  # the session we created: also sweeps pushlake's worker children
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if p.poll() is None:
                p.wait(5)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(name: str, procs: Processes, p: subprocess.Popen, probe: Callable[[], bool],
               timeout: float = 30.0) -> None:
    """Poll ``probe()`` until it is true; fail early, with the server's log, if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise BenchError(f"{name} exited with code {p.returncode}:\n{procs.log_tail(p)}")
        try:
            if probe():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise BenchError(f"{name} was not ready within {timeout:.0f} s:\n{procs.log_tail(p)}")


class Server:
    """``pushlake serve`` on ``data`` with ``teams`` created first: ``keys[team]`` are push keys,
    ``creds[team]`` what ``pushlake teams create --json`` printed (the admin key too). Ready when
    ``/health`` answers one of ``healthy`` and every push key is accepted."""

    def __init__(self, data: Path, logdir: Path, teams: Iterable[str], compactor: bool,
                 extra_args: Sequence[str] = (), healthy: tuple[int, ...] = (200,)) -> None:
        self.data = Path(data)
        self.procs = Processes()
        self.creds: dict[str, dict[str, str]] = {}
        self.data.mkdir(parents=True, exist_ok=True)
        for t in teams:
            out = subprocess.run([PUSHLAKE, "teams", "create", t, "--data", str(self.data), "--json"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise BenchError(f"pushlake teams create {t} failed: {out.stderr.strip()}")
            self.creds[t] = json.loads(out.stdout)
        self.keys = {t: c["pushApiKey"] for t, c in self.creds.items()}
        self.host, self.port = "127.0.0.1", free_port()
        self.url = f"http://{self.host}:{self.port}"
        cmd = [PUSHLAKE, "serve", "--data", str(self.data), "--port", str(self.port), "--min-free", "0",
               *(() if compactor else ("--no-compactor",)), *extra_args]
        print(f"$ {' '.join(cmd)}", flush=True)
        self.logfile = Path(logdir) / f"serve-{self.port}.log"
        self.proc = self.procs.start("pushlake", cmd, self.logfile)
        try:
            wait_until("pushlake serve", self.procs, self.proc,
                       lambda: http("GET", self.url + "/health")[0] in healthy, timeout=60)
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


def log_records(data: Path) -> dict:
    """``pushlake check``'s count of log records (and whether the check passed)."""
    out = subprocess.run([PUSHLAKE, "check", "--data", str(data), "--json"], capture_output=True, text=True)
    try:
        rep = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"pushlake check gave no JSON (exit {out.returncode}): {out.stderr.strip()}") from None
    return {"records": int(rep["info"]["log_records"]), "ok": rep["ok"], "errors": rep["errors"]}


# ---------------------------------------------------------------- HTTP clients

def loop_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when installed (the event loop of ``pushlake serve``)."""
    try:
        import uvloop
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


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
                res.sent[i] = time.monotonic()
                try:
                    async with s.post(url + path, data=body, headers=Server.headers(key)) as r:
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
    with loop_runner() as r:
        return r.run(_push_all(url, items, concurrency, timeout))


async def open_loop(rate: float, duration: float, one: Callable[[int, float], Awaitable[None]]) -> int:
    """Start ``one(i, due)`` at ``start + i / rate`` for every i whose due time falls within
    ``duration`` seconds, whether or not earlier ones are answered; wait for all; return how
    many were started. ``due`` is a time.monotonic() value: latencies count from it."""
    tasks = []
    start = time.monotonic()
    i = 0
    while True:
        due = start + i / rate
        if due - start >= duration:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, due)))
        i += 1
    await asyncio.gather(*tasks)
    return i

"""Ingest benchmark: pushlake's durable push endpoint against a no-op aiohttp server.

Run by hand, from the repository root:
  .venv/bin/python -m bench.ingest_bench [--quick] [--duration S] [--connections N] [--workers N]
                                         [--loader auto|wrk|python] [--no-deployed] [--only PARTS]
                                         [--profile DIR] [--results-dir DIR]

Why it is built this way:
- Absolute req/s on a shared 2-core box mean little, so every load runs twice in one go: first
  against ``bench/noop_server.py`` (aiohttp reading the body and answering 200, i.e. the floor
  any aiohttp receiver pays), then against ``pushlake serve``. The ratio pushlake/no-op is the
  number to watch; both servers get the same number of processes (``--workers``).
- The load generator is wrk (``make bench-tools`` installs it), a C client that can saturate a
  Python server from one or two threads; a Python client would measure itself. wrk's
  ``request()`` Lua hook gives every push a unique itinId (a per-run nonce, the wrk thread id and
  a counter), so pushlake never sees duplicates, and its ``done()`` hook prints one JSON line,
  which is sturdier to parse than wrk's human-readable text. Where wrk is not installed,
  ``--loader auto`` (the default) falls back to an aiohttp client doing the same (same ids, same
  result fields): enough for a ``--quick`` smoke run, and said in the results (the metrics are
  tagged "python client"), since its numbers are bounded by the client itself.
- wrk is closed-loop (no fixed request rate; wrk2 is not packaged), so "half load" is found by
  halving the number of connections until throughput falls to about half the maximum, with one
  bisection step; the run whose rate is closest to half is reported.
- "Durable" is checked, not assumed: after each pushlake run, ``pushlake check`` must count at
  least as many new log records as wrk got 2xx answers (requests minus 4xx/5xx); with the
  compactor on (whose cleaner removes compacted segments) the log's end offset must have moved
  at least that far.
- Two pushlake configurations: the receiver alone (``serve --no-compactor``: what the receiver
  itself costs) and, with ``--deployed`` (the default), ``serve`` as users run it, with its
  compactor projecting what it receives on the same 2 cores, for small pushes and for trips,
  each against a no-op run just before it. A run starts once every server has gone quiet (a
  compactor merging the last run's files would take CPU from the next run, the no-op's too),
  and a run with the compactor ends when it has caught up (/health: lag 0).
- Over every run, the cores used by each kind of process (bench/cpu.py: the receiver's event
  loop and its other threads, the compactor and its projection workers, the load generator,
  the idle servers, the rest of the machine), and with ``--profile DIR`` py-spy profiles of
  pushlake's processes (a run of its own: py-spy's sampling costs CPU).
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

from bench.common import (FIXTURES, PUSHLAKE, ROOT, BenchError, Processes, Server, add_results_arg, cmdline, free_port,
                          http, log_records, loop_runner, pct, row, run_main, wait_until, write_result)
from bench.cpu import Profiler, ServeCpu, fmt_cores, top_frames, tree_cpu
from ingest.log import list_partitions, list_segments, scan_segment
from pushlake.serve import COMPACTOR_NICE, NICE_ENV

PUSH_LUA = ROOT / "bench" / "wrk" / "push.lua"
TRIP_FIXTURE = FIXTURES / "trip_33min.json"
FIXTURE_ITIN_ID = b"9d9b9e60a9ee841fd67a6e92"   # the fixture's itinId, replaced in every push (as push.lua does)

EVENT_PATH = "/push/trip/event"
TRIP_PATH = "/push/trip"
EVENT_PREFIX = b'{"itinId":"'
EVENT_SUFFIX = b'","event":"TRIP_DELETION","date":"2025-02-01T09:12:47.000+0000"}'
EVENT_BODY_BYTES = len(EVENT_PREFIX) + 24 + len(EVENT_SUFFIX)
WRK_TIMEOUT = "30s"  # long enough that slow durable answers count as latency, not as timeouts
RESULT_MARK = "BENCH_RESULT "

HALF_LOAD_METHOD = (
    "wrk is closed-loop (no fixed rate), so half load is approximated by halving the connection count "
    "from the max-load run until req/s falls to <= half the max, plus one bisection step between the "
    "last two counts; the reported run is the one whose req/s is closest to half the max.")


@dataclass
class Run:
    """One load run against one server, with pushlake's durability check when it applies."""
    target: str
    scenario: str
    connections: int
    threads: int
    duration_s: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int]
    rps: float
    mb_s: float
    latency_ms: dict[str, float]
    log_check: dict | None = None
    cores: dict[str, float] | None = None   # cores busy per process kind over the run (bench/cpu.py)
    catch_up_s: float | None = None         # serve with its compactor: until the lake had every push
    profile: dict | None = None             # --profile: py-spy's top frames per process and thread

    @property
    def ok_2xx(self) -> int:
        return self.requests - self.non_2xx


@dataclass
class Row:
    """A line of the result table: the same load against both servers."""
    scenario: str
    noop: Run
    pushlake: Run
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        ratio = round(self.pushlake.rps / self.noop.rps, 3) if self.noop.rps else None
        return {"scenario": self.scenario, "ratio_pushlake_over_noop": ratio, "notes": self.notes,
                **self.extra, "noop": asdict(self.noop), "pushlake": asdict(self.pushlake)}


# ---------------------------------------------------------------- load generators

def ensure_wrk() -> str:
    """Return wrk's path, installing the Debian package first if it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        print(f"wrk not found; running: {' '.join(cmd)}", flush=True)
        try:
            subprocess.run(cmd, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.CalledProcessError) as e:
            raise BenchError(f"could not install wrk ({' '.join(cmd)} failed: {e}); run `make bench-tools` "
                             "(apt-get install wrk, needs root), or use --loader python") from None
    found = shutil.which("wrk")
    if not found:
        raise BenchError("apt-get reported success but wrk is still not on PATH")
    return found


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    text = out.stdout or out.stderr
    return text.splitlines()[0].strip() if text else "unknown"


def run_wrk(wrk: str, url: str, headers: list[str], connections: int, duration: float, mode: str, nonce: str,
            body_file: Path | None) -> dict:
    """One wrk run with bench/wrk/push.lua (whole seconds: wrk takes no fractions); its
    BENCH_RESULT line as a dict."""
    cmd = [wrk, "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{max(1, math.ceil(duration))}s",
           "--timeout", WRK_TIMEOUT, "-s", str(PUSH_LUA)]
    for h in headers:
        cmd += ["-H", h]
    cmd += [url, "--", mode, nonce, *([str(body_file)] if body_file else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if out.returncode != 0 or not lines:
        raise BenchError(f"wrk failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1][len(RESULT_MARK):])


async def _python_load(url: str, headers: list[str], connections: int, duration: float, mode: str, nonce: str,
                       body_file: Path | None) -> dict:
    import aiohttp
    hdr = dict(h.split(": ", 1) for h in headers)
    if mode == "event":
        pre, post = EVENT_PREFIX, EVENT_SUFFIX
    else:
        raw = body_file.read_bytes()
        if mode == "trip":
            pre, sep, post = raw.partition(FIXTURE_ITIN_ID)
            if not sep:
                raise BenchError(f"{body_file} does not contain itinId {FIXTURE_ITIN_ID.decode()}")
        else:
            pre, post = raw, None  # "raw": the same bytes every time (the gzip-encoded trip)
    lat_us: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
        start = time.monotonic()
        end = start + duration

        async def worker(tid: int) -> None:
            n = 0
            while time.monotonic() < end:
                n += 1
                body = pre if post is None else pre + f"{nonce}{tid:04x}{n:012x}".encode() + post
                t = time.perf_counter()
                try:
                    async with s.post(url, data=body, headers=hdr) as r:
                        await r.read()
                        if r.status > 399:
                            errors["status"] += 1
                    lat_us.append((time.perf_counter() - t) * 1e6)
                except asyncio.TimeoutError:
                    errors["timeout"] += 1
                except aiohttp.ClientConnectionError:
                    errors["read"] += 1
        await asyncio.gather(*(worker(i) for i in range(connections)))
        elapsed = time.monotonic() - start
    if not lat_us:
        raise BenchError(f"the Python load generator got no answer from {url} in {duration:g} s")
    return {"duration_us": elapsed * 1e6, "requests": len(lat_us), "errors": errors,
            "latency_us": {"min": min(lat_us), "mean": statistics.fmean(lat_us), "max": max(lat_us),
                           "stdev": statistics.pstdev(lat_us), "p50": pct(lat_us, 50), "p90": pct(lat_us, 90),
                           "p99": pct(lat_us, 99), "p999": pct(lat_us, 99.9)}}


def run_python(url: str, headers: list[str], connections: int, duration: float, mode: str, nonce: str,
               body_file: Path | None) -> dict:
    """The fallback when wrk is missing: an aiohttp client, closed loop, ``connections`` requests in
    flight, with the fields of push.lua's BENCH_RESULT line."""
    with loop_runner() as r:
        return r.run(_python_load(url, headers, connections, duration, mode, nonce, body_file))


# ---------------------------------------------------------------- servers

def start_noop(procs: Processes, tmp: Path, workers: int) -> tuple[str, list[int]]:
    """The no-op server(s) on one port: its URL and their process ids."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pids = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "bench.noop_server", "--port", str(port)] + (["--reuse-port"] if workers > 1 else [])
        p = procs.start(f"noop-{i}", cmd, tmp / f"noop-{i}.log")
        wait_until(f"no-op server {i}", procs, p, lambda: http("GET", url + "/health")[0] == 200)
        pids.append(p.pid)
    return url, pids


# ---------------------------------------------------------------- running the loads

def log_end(data: Path) -> int:
    """The sum over log partitions of the offset after the last record on disk (the newest
    segment that holds one): with the compactor on, the cleaner removes compacted segments, so
    counting records (``pushlake check``) would undercount what a run added; offsets never go back."""
    total = 0
    for part in list_partitions(data):
        for _, seg in reversed(list_segments(data / "log" / part)):
            last = scan_segment(seg).last_offset
            if last is not None:
                total += last + 1
                break
    return total


@dataclass
class Target:
    """A server under load: its URL, push headers, its processes (the first one's tree is measured
    as the server), and (pushlake) its data and process."""
    url: str
    headers: list[str]
    pids: list[int]
    srv: Server | None = None
    records: int = 0   # log records (receiver alone) or end offset (with the compactor) so far

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def compactor(self) -> bool:
        return self.srv is not None and "--no-compactor" not in self.srv.proc.args


class Bench:
    def __init__(self, loader: str, wrk: str | None, duration: float, noop: tuple[str, list[int]], settle: float,
                 tmp: Path, quiet_s: float) -> None:
        self.loader, self.wrk, self.duration, self.settle, self.quiet_s = loader, wrk, duration, settle, quiet_s
        self.profile_dir: Path | None = None
        self.targets: dict[str, Target] = {"noop": Target(noop[0], [], noop[1])}
        self.failures: list[str] = []
        self.gzip_body = tmp / "trip.json.gz"
        self.gzip_body.write_bytes(gzip.compress(TRIP_FIXTURE.read_bytes()))

    def add(self, name: str, srv: Server, team: str) -> None:
        """``pushlake`` (the receiver alone) or ``deployed`` (serve with its compactor)."""
        t = Target(srv.url, [f"{k}: {v}" for k, v in Server.headers(srv.keys[team]).items()], [srv.pid], srv)
        t.records = log_end(srv.data) if t.compactor else log_records(srv.data)["records"]
        self.targets[name] = t
        self.targets["noop"].headers = t.headers

    def run(self, target: str, scenario: str, connections: int, duration: float | None = None) -> Run:
        duration = duration or self.duration
        tgt = self.targets[target]
        headers = list(tgt.headers)
        if scenario == "trip":
            mode, path, body_bytes, body_file = "trip", TRIP_PATH, TRIP_FIXTURE.stat().st_size, TRIP_FIXTURE
        elif scenario == "gzip":  # MB/s of the inflated body
            mode, path, body_bytes, body_file = "raw", TRIP_PATH, TRIP_FIXTURE.stat().st_size, self.gzip_body
            headers.append("Content-Encoding: gzip")
        else:
            mode, path, body_bytes, body_file = "event", EVENT_PATH, EVENT_BODY_BYTES, None
        url, nonce = tgt.url + path, secrets.token_hex(4)
        self.quiet()
        prof = self.profiler(target, scenario, connections, duration)
        meter = self.meter(target)
        before = meter.sample()
        if self.wrk:
            res = run_wrk(self.wrk, url, headers, connections, duration, mode, nonce, body_file)
        else:
            res = run_python(url, headers, connections, duration, mode, nonce, body_file)
        cores = ServeCpu.cores(before, meter.sample())
        profile = {k: {"file": str(v), "top": top_frames(v)} for k, v in prof.wait().items()} if prof else None
        secs = res["duration_us"] / 1e6
        errors = res["errors"]
        rps = res["requests"] / secs
        run = Run(target=target, scenario=scenario, connections=connections,
                  threads=min(2, connections) if self.wrk else 1, duration_s=round(secs, 3),
                  requests=res["requests"], non_2xx=errors["status"],
                  socket_errors={k: v for k, v in errors.items() if k != "status"},
                  rps=round(rps, 1), mb_s=round(rps * body_bytes / 1e6, 2),
                  latency_ms={k: round(v / 1000, 3) for k, v in res["latency_us"].items()},
                  cores={k: round(v, 3) for k, v in cores.items()} if cores else None, profile=profile)
        if tgt.srv is not None:
            self.verify_durable(run, tgt)
        print(f"  {target:8} {scenario:6} c={connections:<3} {run.rps:9.1f} req/s {run.mb_s:8.2f} MB/s  "
              f"p50 {run.latency_ms['p50']:8.2f} ms  p99 {run.latency_ms['p99']:8.2f} ms  "
              f"non-2xx {run.non_2xx}  socket errors {sum(run.socket_errors.values())}"
              + (f"  log +{run.log_check['new_records']} >= 2xx {run.ok_2xx}: "
                 f"{'OK' if run.log_check['ok'] else 'FAIL'}" if run.log_check else ""), flush=True)
        if run.cores:
            print(f"           cores: {fmt_cores(run.cores)}", flush=True)
        if tgt.compactor:
            run.catch_up_s = self.catch_up(tgt)
            print(f"           compactor caught up {run.catch_up_s:.1f} s after the load", flush=True)
        return run

    def profiler(self, target: str, scenario: str, connections: int, duration: float) -> Profiler | None:
        """--profile: py-spy on a pushlake target's receiver, and its compactor with the
        compactor's children (projection workers, Iceberg mirror), for the load's duration."""
        tgt = self.targets[target]
        if self.profile_dir is None or tgt.srv is None:
            return None
        pids = {"receiver": tgt.srv.pid}
        kids = [k for k in tgt.srv.child_pids() if "resource_tracker" not in cmdline(k)]
        if tgt.compactor and len(kids) == 1:
            pids["compactor"] = kids[0]
        out = self.profile_dir / f"{target}-{scenario}-c{connections}"
        return Profiler(out, pids, duration, subprocesses=("compactor",))

    def meter(self, target: str) -> ServeCpu:
        """The CPU of the target's processes by kind (for the no-op: its event loop under the
        receiver's name), and of the servers not under load (which should idle)."""
        tgt = self.targets[target]
        extra = {f"{target} {i + 1}": p for i, p in enumerate(tgt.pids[1:])}
        extra |= {f"idle {n}": p for n, t in self.targets.items() if n != target for p in t.pids[:1]}
        return ServeCpu(tgt.pids[0], tgt.port, extra)

    def quiet(self) -> float:
        """Wait (at most ``quiet_s``) until every server together uses under 0.1 cores over half a
        second (a compactor still merging the last run's files would take CPU from the next)."""
        t0 = time.monotonic()
        pids = [p for t in self.targets.values() for p in t.pids]
        while time.monotonic() - t0 < self.quiet_s:
            a = sum(tree_cpu(p) for p in pids)
            time.sleep(0.5)
            if sum(tree_cpu(p) for p in pids) - a < 0.05:
                break
        return time.monotonic() - t0

    def catch_up(self, tgt: Target, timeout: float = 300.0) -> float:
        """Seconds until /health says the compactor has projected every record (so the next run
        does not share the cores with this one's backlog)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                comp = json.loads(http("GET", tgt.url + "/health", timeout=5)[1]).get("compactor") or {}
            except (OSError, ValueError):
                comp = {}
            if comp.get("lagRecords") == 0:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise BenchError(f"the compactor of {tgt.url} had not caught up {timeout:.0f} s after the load")

    def verify_durable(self, run: Run, tgt: Target) -> None:
        """Every 2xx must be in the log: count the records this run added (receiver alone), or
        how far the log's end offset moved (with the compactor, whose cleaner removes segments)."""
        time.sleep(self.settle)  # let requests still in flight when the load stopped reach the log (they only add records)
        if tgt.compactor:
            rep = {"records": log_end(tgt.srv.data), "ok": True, "errors": []}
        else:
            rep = log_records(tgt.srv.data)
        new = rep["records"] - tgt.records
        tgt.records = rep["records"]
        ok = new >= run.ok_2xx and rep["ok"]
        run.log_check = {"new_records": new, "acknowledged_2xx": run.ok_2xx, "ok": ok,
                         "check_errors": rep["errors"]}
        if not ok:
            self.failures.append(f"{run.target} {run.scenario} c={run.connections}: log gained {new} records but "
                                 f"the client saw {run.ok_2xx} 2xx answers"
                                 + (f"; check errors: {rep['errors']}" if rep["errors"] else ""))

    def pair(self, scenario: str, connections: int, target: str = "pushlake") -> tuple[Run, Run]:
        return self.run("noop", scenario, connections), self.run(target, scenario, connections)

    def half_load(self, target: str, max_run: Run, max_halvings: int = 99) -> tuple[Run, list[Run]]:
        """Closed-loop stand-in for a fixed half rate: see HALF_LOAD_METHOD."""
        goal = max_run.rps / 2
        runs = [max_run]
        c = max_run.connections
        while c > 1 and len(runs) <= max_halvings:
            c //= 2
            runs.append(self.run(target, "small", c))
            if runs[-1].rps <= goal:
                break
        above = [r for r in runs if r.rps > goal]
        below = [r for r in runs if r.rps <= goal]
        if above and below:
            hi, lo = min(r.connections for r in above), max(r.connections for r in below)
            mid = round(math.sqrt(hi * lo))
            if lo < mid < hi:
                runs.append(self.run(target, "small", mid))
        best = min(runs[1:] or runs, key=lambda r: abs(r.rps - goal))
        return best, runs[1:]


# ---------------------------------------------------------------- report

def fmt_table(rows: list[Row]) -> str:
    head = ["scenario", "conns", "no-op req/s", "pushlake req/s", "ratio", "no-op MB/s", "pushlake MB/s",
            "no-op p50/p99 ms", "pushlake p50/p99 ms", "non-2xx no-op/pushlake"]
    body = []
    for r in rows:
        n, p = r.noop, r.pushlake
        conns = str(n.connections) if n.connections == p.connections else f"{n.connections}/{p.connections}"
        body.append([r.scenario, conns, f"{n.rps:.0f}", f"{p.rps:.0f}", f"{p.rps / n.rps:.2f}" if n.rps else "-",
                     f"{n.mb_s:.2f}", f"{p.mb_s:.2f}",
                     f"{n.latency_ms['p50']:.2f} / {n.latency_ms['p99']:.2f}",
                     f"{p.latency_ms['p50']:.2f} / {p.latency_ms['p99']:.2f}", f"{n.non_2xx} / {p.non_2xx}"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)


def disk_fsync_mb_s(tmp: Path, mb: int = 512, runs: int = 1) -> list[float]:
    """The disk's fsynced sequential write bandwidth, measured like `dd ... conv=fdatasync`
    from a file of random bytes (zeros compress or dedupe on some disks and mislead), ``runs``
    times (the median is the peer)."""
    src, dst = tmp / "random.bin", tmp / "dd.out"
    with open(src, "wb") as f:
        for _ in range(max(1, mb // 16)):
            f.write(os.urandom(16 << 20))
        os.fsync(f.fileno())  # else the first dd shares the disk with this file's writeback (382 vs 1,900 MB/s)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fdatasync"], check=True, capture_output=True)
        out.append(max(1, mb // 16) * 16 * 1.048576 / (time.perf_counter() - t))
        dst.unlink()
    src.unlink()
    return out


PARTS = ("small", "half", "trip", "gzip", "deployed")  # the default run; "nice" only when asked for
DEPLOYED_SMALL = "small, max load, serve with compactor"
DEPLOYED_TRIP = "trip 170KB, max load, serve with compactor"


def nice_rows(ab: dict[str, dict[str, list[Run]]]) -> list[dict]:
    """The niceness A/B: medians over the rounds, the default against nice 0."""
    out = []
    for scenario, by in ab.items():
        base, new = by["nice-0"], by["nice-default"]
        label = "trip 170KB" if scenario == "trip" else "small"
        med = lambda runs, f: statistics.median(f(r) for r in runs)  # noqa: E731
        out.append(row(f"ingest {label}, max load, serve with compactor: req/s, compactor nice {COMPACTOR_NICE} vs 0",
                       "req/s", "compactor nice 0", med(base, lambda r: r.rps), med(new, lambda r: r.rps)))
        out.append(row(f"ingest {label}, max load, serve with compactor: p99, compactor nice {COMPACTOR_NICE} vs 0",
                       "ms", "compactor nice 0", med(base, lambda r: r.latency_ms["p99"]),
                       med(new, lambda r: r.latency_ms["p99"]), higher_is_better=False))
    return out


def summary_rows(rows: list[Row], disk: float, workers: int, tag: str) -> list[dict]:
    """The ratios of issue 4, in bench/common.py's row format (read by bench/run_all.py)."""
    by = {r.scenario: r for r in rows}
    w = f" (--workers {workers})" if workers > 1 else ""
    w += tag
    out = []
    for name, target in (("small, max load", 0.8), ("trip 170KB, max load", None), ("trip 170KB gzip, max load", None)):
        r = by.get(name)
        if r:
            out.append(row(f"ingest {name}: req/s{w}", "req/s", "no-op aiohttp", r.noop.rps, r.pushlake.rps, target=target))
    dep = by.get(DEPLOYED_SMALL)
    if dep:
        out.append(row(f"ingest small, max load, serve with compactor: req/s{w}", "req/s", "no-op aiohttp",
                       dep.noop.rps, dep.pushlake.rps, target=0.6))
        out.append(row(f"ingest small, max load, serve with compactor: p99{w}", "ms", "20 ms target", 20.0,
                       dep.pushlake.latency_ms["p99"], higher_is_better=False, target=1.0))
    dep = by.get(DEPLOYED_TRIP)
    if dep:
        out.append(row(f"ingest trip 170KB, max load, serve with compactor: req/s{w}", "req/s", "no-op aiohttp",
                       dep.noop.rps, dep.pushlake.rps))
        out.append(row(f"ingest trip 170KB, max load, serve with compactor: MB/s vs disk{w}", "MB/s",
                       "dd conv=fdatasync", disk, dep.pushlake.mb_s))
    half = by.get("small, ~half load")
    if half:
        out.append(row(f"ingest small, ~half load: p99{w}", "ms", "10 ms target", 10.0, half.pushlake.latency_ms["p99"],
                       higher_is_better=False, target=1.0))
    for name in ("trip 170KB, max load", "trip 170KB gzip, max load"):
        r = by.get(name)
        if r:
            out.append(row(f"ingest {name}: MB/s vs disk{w}", "MB/s", "dd conv=fdatasync", disk, r.pushlake.mb_s,
                           target=0.9))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pushlake ingest benchmark (wrk): no-op aiohttp vs durable push")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: half-second loads (1 s with wrk), 8 connections, no warm-up, one halving step "
                         "towards half load, a 32 MB disk check")
    ap.add_argument("--duration", type=float, help="seconds per load run (default 15, or 0.5 with --quick)")
    ap.add_argument("--connections", type=int, help="connections at max load (default 64, or 8 with --quick)")
    ap.add_argument("--deployed", action=argparse.BooleanOptionalAction, default=True,
                    help="also run small pushes and trips against `pushlake serve` with its compactor, as deployed "
                         "(default on; the receiver-alone runs use --no-compactor)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="py-spy profiles (raw collapsed stacks) of pushlake's processes during each of its runs "
                         "into DIR, their top frames in the result file (py-spy's sampling costs some CPU: "
                         "profile in a run of its own)")
    ap.add_argument("--only", help="comma-separated parts to run: small, half (with small), trip, gzip, deployed, "
                                   "and nice (not in the default run: the compactor's default niceness against "
                                   "none, --rounds interleaved rounds of trips and small pushes at max load); "
                                   "the result file is then ingest-<parts>.json")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the nice A/B (default 3)")
    ap.add_argument("--workers", type=int, default=1, help="pushlake serve --workers (and no-op processes), default 1")
    ap.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto",
                    help="load generator: wrk (installed with apt-get if missing), python (aiohttp), or auto "
                         "(wrk if it is on PATH, else python); default auto")
    add_results_arg(ap)
    a = ap.parse_args(argv)
    duration = a.duration or (0.5 if a.quick else 15.0)
    connections = a.connections or (8 if a.quick else 64)
    if connections < 1 or a.workers < 1 or duration <= 0:
        ap.error("--connections, --workers and --duration must be positive")
    parts = set(PARTS) if not a.only else {p.strip() for p in a.only.split(",") if p.strip()}
    if not parts or parts - set(PARTS) - {"nice"}:
        ap.error(f"--only takes some of: {', '.join(PARTS)}, nice")
    if not Path(PUSHLAKE).exists():
        print(f"{PUSHLAKE} is missing: run `make install` in {ROOT}", file=sys.stderr)
        return 2

    procs = Processes()
    srv: Server | None = None
    deployed: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="pushlake-bench-"))
    try:
        if a.loader == "wrk" or (a.loader == "auto" and shutil.which("wrk")):
            wrk: str | None = ensure_wrk()
            loader = wrk_version(wrk)
        else:
            wrk, loader = None, f"python aiohttp {version('aiohttp')} client (no wrk: bounded by the client itself)"
        meta = {"nproc": os.cpu_count(), "pushlake_version": version("pushlake"), "loader": loader,
                "aiohttp": version("aiohttp"), "duration_s": duration, "connections": connections,
                "workers": a.workers, "quick": a.quick, "deployed": a.deployed, "only": a.only, "trip_body_bytes": TRIP_FIXTURE.stat().st_size,
                "event_body_bytes": EVENT_BODY_BYTES, "half_load_method": HALF_LOAD_METHOD}
        print(f"nproc {meta['nproc']} | pushlake {meta['pushlake_version']} | load: {loader} | aiohttp {meta['aiohttp']}")
        print(f"{duration:g} s per run, {connections} connections at max load, {a.workers} worker(s); "
              "other work on this machine makes the numbers noisy", flush=True)

        noop = start_noop(procs, tmp, a.workers)
        srv = Server(tmp / "data", tmp, ["bench"], compactor=False, extra_args=["--workers", str(a.workers)])
        bench = Bench(loader, wrk, duration, noop, settle=0.2 if a.quick else 0.5, tmp=tmp,
                      quiet_s=0.0 if a.quick else 30.0)
        bench.add("pushlake", srv, "bench")
        for target in () if a.quick else ("noop", "pushlake"):  # first requests pay for imports, catalog creation...
            bench.run(target, "small", connections, duration=1.0)
        bench.profile_dir = a.profile

        rows: list[Row] = []
        notes = ""
        sweeps: dict[str, list[Run]] = {"pushlake": []}
        if {"small", "half"} & parts:
            print("\n(i) small pushes: TRIP_DELETION events, max load", flush=True)
            small = bench.pair("small", connections)
            rows.append(Row("small, max load", *small))
        if "half" in parts:
            print(f"\n(ii) small pushes at about half load\n    {HALF_LOAD_METHOD}", flush=True)
            half = {}
            for target, max_run in zip(("noop", "pushlake"), small):
                half[target], sweeps[target] = bench.half_load(target, max_run, 1 if a.quick else 99)
            notes = "; ".join(f"{t}: c={half[t].connections} gives {half[t].rps / m.rps:.0%} of max"
                              + (" (even one connection is above half)" if all(r.rps > m.rps / 2 for r in sweeps[t]) else "")
                              for t, m in zip(("noop", "pushlake"), small))
            rows.append(Row("small, ~half load", half["noop"], half["pushlake"], notes,
                            {"sweep": {t: [asdict(r) for r in sweeps[t]] for t in sweeps}}))
        if "trip" in parts:
            print(f"\n(iii) ~{TRIP_FIXTURE.stat().st_size // 1000} KB trips, max load", flush=True)
            rows.append(Row("trip 170KB, max load", *bench.pair("trip", connections)))
        if "gzip" in parts:
            print("\n(iv) the same trip gzip-encoded, max load", flush=True)
            rows.append(Row("trip 170KB gzip, max load", *bench.pair("gzip", connections)))
        if "deployed" in parts and a.deployed:
            print("\n(v) `pushlake serve` as deployed, with its compactor: small pushes, then trips, max load "
                  "(each waits for the compactor to catch up with the run before)", flush=True)
            dep = Server(tmp / "deployed", tmp, ["bench"], compactor=True, extra_args=["--workers", str(a.workers)])
            deployed.append(dep)
            bench.add("deployed", dep, "bench")
            if not a.quick:  # its first steps import and open what an idle compactor has not needed yet
                bench.run("deployed", "small", connections, duration=1.0)
            bench.profile_dir = a.profile
            rows.append(Row(DEPLOYED_SMALL, *bench.pair("small", connections, "deployed")))
            rows.append(Row(DEPLOYED_TRIP, *bench.pair("trip", connections, "deployed")))
            dep.stop()
        ab: dict[str, dict[str, list[Run]]] = {}
        if "nice" in parts:
            print(f"\n(vi) the compactor's niceness, A/B: serve with its compactor at nice {COMPACTOR_NICE} (the "
                  f"default) and at 0 ({NICE_ENV}=0), interleaved, {a.rounds} rounds", flush=True)
            for name, nice in (("nice-default", None), ("nice-0", "0")):
                env_before = os.environ.get(NICE_ENV)
                if nice is not None:
                    os.environ[NICE_ENV] = nice
                try:
                    s = Server(tmp / name, tmp, ["bench"], compactor=True, extra_args=["--workers", str(a.workers)])
                finally:
                    if nice is not None:
                        os.environ.pop(NICE_ENV) if env_before is None else os.environ.__setitem__(NICE_ENV, env_before)
                deployed.append(s)
                bench.add(name, s, "bench")
                if not a.quick:
                    bench.run(name, "small", connections, duration=1.0)
            for _ in range(a.rounds):
                for scenario in ("trip", "small"):
                    for name in ("nice-0", "nice-default"):
                        ab.setdefault(scenario, {}).setdefault(name, []).append(bench.run(name, scenario, connections))
        disks = disk_fsync_mb_s(tmp, 32 if a.quick else 512, 1 if a.quick else 3)
        disk = statistics.median(disks)
        print(f"\ndisk: sequential write + fdatasync of random data (dd conv=fdatasync): {disk:.0f} MB/s "
              f"(median of {', '.join(f'{d:.0f}' for d in disks)})")

        print("\nResults (latencies in ms; ratio = pushlake req/s / no-op req/s; MB/s = request bodies)")
        if rows:
            print(fmt_table(rows))
        print(f"half load: {notes}")
        all_pl = [r.pushlake for r in rows] + sweeps["pushlake"] + [r for d in ab.values() for v in d.values() for r in v]
        for scenario, by in ab.items():
            for name, runs in by.items():
                print(f"{scenario:5} {name:12} req/s " + ", ".join(f"{r.rps:.0f}" for r in runs) + "; p99 ms "
                      + ", ".join(f"{r.latency_ms['p99']:.1f}" for r in runs))
        print(f"durability: {'OK' if not bench.failures else 'FAILED'} - after every pushlake run the log gained "
              f">= as many records as 2xx answers (non-2xx total: {sum(r.non_2xx for r in all_pl)})")
        for f in bench.failures:
            print(f"  FAIL {f}")

        name = ("ingest" if a.workers == 1 else f"ingest-w{a.workers}") + (
            "-" + "-".join(sorted(parts)) if a.only else "")  # a partial run never replaces the full one's file
        summary = summary_rows(rows, disk, a.workers, "" if wrk else " (python client)") + nice_rows(ab)
        write_result(name, summary, args=meta,
                     notes=[f"load generator: {loader}", f"half load: {notes}"], results_dir=a.results_dir,
                     extra={"durable_ok": not bench.failures, "durability_failures": bench.failures,
                            "disk_fsync_mb_s": disk, "disk_fsync_runs_mb_s": disks,
                            "nice_ab": {sc: {k: [asdict(r) for r in v] for k, v in d.items()} for sc, d in ab.items()},
                            "runs": [r.as_dict() for r in rows]})
        return 1 if bench.failures else 0
    finally:
        if srv is not None:
            srv.stop()
        for d in deployed:
            d.stop()
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)

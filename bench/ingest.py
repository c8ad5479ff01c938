"""Ingest benchmark: pushlake's durable push endpoint against a no-op aiohttp server.

Run by hand:  .venv/bin/python bench/ingest.py [--quick] [--duration S] [--connections N] [--workers N]

Why it is built this way:
- Absolute req/s on a shared 2-core box mean little, so every load runs twice in one go: first
  against ``bench/noop_server.py`` (aiohttp reading the body and answering 200, i.e. the floor
  any aiohttp receiver pays), then against ``pushlake serve``. The ratio pushlake/no-op is the
  number to watch; both servers get the same number of processes (``--workers``).
- The load generator is wrk, a C client that can saturate a Python server from one or two
  threads; a Python client would measure itself. wrk's ``request()`` Lua hook gives every push
  a unique itinId (a per-run nonce, the wrk thread id and a counter), so pushlake never sees
  duplicates, and its ``done()`` hook prints one JSON line, which is sturdier to parse than
  wrk's human-readable text.
- wrk is closed-loop (no fixed request rate; wrk2 is not packaged), so "half load" is found by
  halving the number of connections until throughput falls to about half the 64-connection
  maximum, with one bisection step; the run whose rate is closest to half is reported.
- "Durable" is checked, not assumed: after each pushlake run, ``pushlake check`` must count at
  least as many new log records as wrk got 2xx answers (requests minus 4xx/5xx).
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
PUSH_LUA = BENCH_DIR / "wrk" / "push.lua"
NOOP_SERVER = BENCH_DIR / "noop_server.py"
RESULTS_FILE = BENCH_DIR / "results" / "ingest.json"
PUSHLAKE = ROOT / ".venv" / "bin" / "pushlake"
TRIP_FIXTURE = Path("/work/shared/fixtures/trip_33min.json")

EVENT_PATH = "/push/trip/event"
TRIP_PATH = "/push/trip"
EVENT_BODY_BYTES = len('{"itinId":"%s","event":"TRIP_DELETION","date":"2025-02-01T09:12:47.000+0000"}' % ("0" * 24))
WRK_TIMEOUT = "30s"  # long enough that slow durable answers count as latency, not as timeouts
WARMUP_S = 1
RESULT_MARK = "BENCH_RESULT "

HALF_LOAD_METHOD = (
    "wrk is closed-loop (no fixed rate), so half load is approximated by halving the connection count "
    "from the max-load run until req/s falls to <= half the max, plus one bisection step between the "
    "last two counts; the reported run is the one whose req/s is closest to half the max.")


class BenchError(Exception):
    pass


@dataclass
class Run:
    """One wrk run against one server, with pushlake's durability check when it applies."""
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


# ---------------------------------------------------------------- setup helpers

def ensure_wrk() -> str:
    """Return wrk's path, installing the Debian package first if it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    cmds = [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]]
    for cmd in cmds:
        print(f"wrk not found; running: {' '.join(cmd)}", flush=True)
        try:
            subprocess.run(cmd, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.CalledProcessError) as e:
            raise BenchError(f"could not install wrk ({' '.join(cmd)} failed: {e}); install it by hand "
                             "(apt-get install wrk, needs root) and run again") from None
    found = shutil.which("wrk")
    if not found:
        raise BenchError("apt-get reported success but wrk is still not on PATH")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "unknown"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Processes:
    """Servers started by the benchmark; ``stop_all`` ends each one (and its process group) by id."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, cmd: list[str], log_path: Path) -> subprocess.Popen:
        with open(log_path, "wb") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
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


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(name: str, procs: Processes, p: subprocess.Popen, probe, timeout: float = 30.0) -> None:
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


def start_noop(procs: Processes, tmp: Path, workers: int) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for i in range(workers):
        cmd = [sys.executable, str(NOOP_SERVER), "--port", str(port)] + (["--reuse-port"] if workers > 1 else [])
        p = procs.start(f"noop-{i}", cmd, tmp / f"noop-{i}.log")
        wait_until(f"no-op server {i}", procs, p, lambda: http("GET", url + "/health")[0] == 200)
    return url


def start_pushlake(procs: Processes, data: Path, tmp: Path, workers: int) -> tuple[str, str]:
    """Start ``pushlake serve``, create the bench team; return (base url, push key)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(PUSHLAKE), "serve", "--data", str(data), "--port", str(port), "--no-compactor",
           "--min-free", "0", "--workers", str(workers)]
    print(f"$ {' '.join(cmd)}", flush=True)
    p = procs.start("pushlake", cmd, tmp / "pushlake.log")
    wait_until("pushlake serve", procs, p, lambda: http("GET", url + "/health")[0] == 200)
    out = subprocess.run([str(PUSHLAKE), "teams", "create", "bench", "--data", str(data), "--json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"pushlake teams create failed: {out.stderr.strip()}")
    key = json.loads(out.stdout)["pushApiKey"]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    probe_body = b'{"itinId":"bench-probe","event":"TRIP_DELETION","date":"2025-02-01T09:12:47.000+0000"}'
    # receivers reload teams at most once a second: wait until the new key is accepted
    wait_until("pushlake (team key)", procs, p,
               lambda: http("POST", url + EVENT_PATH, probe_body, headers)[0] == 200, timeout=10)
    return url, key


def log_records(data: Path) -> dict:
    out = subprocess.run([str(PUSHLAKE), "check", "--data", str(data), "--json"], capture_output=True, text=True)
    try:
        rep = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"pushlake check gave no JSON (exit {out.returncode}): {out.stderr.strip()}") from None
    return {"records": int(rep["info"]["log_records"]), "ok": rep["ok"], "errors": rep["errors"]}


# ---------------------------------------------------------------- running wrk

class Bench:
    def __init__(self, wrk: str, duration: float, noop_url: str, pushlake_url: str, push_key: str,
                 data: Path) -> None:
        self.wrk, self.duration = wrk, duration
        self.urls = {"noop": noop_url, "pushlake": pushlake_url}
        self.headers = [f"Authorization: Bearer {push_key}", "Content-Type: application/json"]
        self.data = data
        self.records = log_records(data)["records"]
        self.failures: list[str] = []
        self.gzip_body = data.parent / "trip.json.gz"
        self.gzip_body.write_bytes(gzip.compress(TRIP_FIXTURE.read_bytes()))

    def wrk_run(self, target: str, scenario: str, connections: int, duration: float | None = None) -> Run:
        duration = duration or self.duration
        threads = min(2, connections)
        extra_headers = []
        if scenario == "trip":
            mode, path, body_bytes = "trip", TRIP_PATH, TRIP_FIXTURE.stat().st_size
            lua_args = [mode, secrets.token_hex(4), str(TRIP_FIXTURE)]
        elif scenario == "gzip":
            mode, path, body_bytes = "raw", TRIP_PATH, TRIP_FIXTURE.stat().st_size  # MB/s of the inflated body
            lua_args = [mode, secrets.token_hex(4), str(self.gzip_body)]
            extra_headers = ["Content-Encoding: gzip"]
        else:
            mode, path, body_bytes = "event", EVENT_PATH, EVENT_BODY_BYTES
            lua_args = [mode, secrets.token_hex(4)]
        cmd = [self.wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "--timeout", WRK_TIMEOUT,
               "-s", str(PUSH_LUA)]
        for h in self.headers + extra_headers:
            cmd += ["-H", h]
        cmd += [self.urls[target] + path, "--", *lua_args]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith(RESULT_MARK)]
        if out.returncode != 0 or not lines:
            raise BenchError(f"wrk failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
        res = json.loads(lines[-1][len(RESULT_MARK):])
        secs = res["duration_us"] / 1e6
        errors = res["errors"]
        rps = res["requests"] / secs
        run = Run(target=target, scenario=scenario, connections=connections, threads=threads, duration_s=round(secs, 3),
                  requests=res["requests"], non_2xx=errors["status"],
                  socket_errors={k: v for k, v in errors.items() if k != "status"},
                  rps=round(rps, 1), mb_s=round(rps * body_bytes / 1e6, 2),
                  latency_ms={k: round(v / 1000, 3) for k, v in res["latency_us"].items()})
        if target == "pushlake":
            self.verify_durable(run)
        print(f"  {target:8} {scenario:6} c={connections:<3} {run.rps:9.1f} req/s {run.mb_s:8.2f} MB/s  "
              f"p50 {run.latency_ms['p50']:8.2f} ms  p99 {run.latency_ms['p99']:8.2f} ms  "
              f"non-2xx {run.non_2xx}  socket errors {sum(run.socket_errors.values())}"
              + (f"  log +{run.log_check['new_records']} >= 2xx {run.ok_2xx}: "
                 f"{'OK' if run.log_check['ok'] else 'FAIL'}" if run.log_check else ""), flush=True)
        return run

    def verify_durable(self, run: Run) -> None:
        """Every 2xx must be in the log: count the records this run added."""
        time.sleep(0.5)  # let requests still in flight when wrk stopped reach the log (they only add records)
        rep = log_records(self.data)
        new = rep["records"] - self.records
        self.records = rep["records"]
        ok = new >= run.ok_2xx and rep["ok"]
        run.log_check = {"new_records": new, "acknowledged_2xx": run.ok_2xx, "ok": ok,
                         "check_errors": rep["errors"]}
        if not ok:
            self.failures.append(f"{run.scenario} c={run.connections}: log gained {new} records but wrk saw "
                                 f"{run.ok_2xx} 2xx answers" + (f"; check errors: {rep['errors']}" if rep["errors"] else ""))

    def pair(self, scenario: str, connections: int) -> tuple[Run, Run]:
        return self.wrk_run("noop", scenario, connections), self.wrk_run("pushlake", scenario, connections)

    def half_load(self, target: str, max_run: Run) -> tuple[Run, list[Run]]:
        """Closed-loop stand-in for a fixed half rate: see HALF_LOAD_METHOD."""
        goal = max_run.rps / 2
        runs = [max_run]
        c = max_run.connections
        while c > 1:
            c //= 2
            runs.append(self.wrk_run(target, "small", c))
            if runs[-1].rps <= goal:
                break
        above = [r for r in runs if r.rps > goal]
        below = [r for r in runs if r.rps <= goal]
        if above and below:
            hi, lo = min(r.connections for r in above), max(r.connections for r in below)
            mid = round(math.sqrt(hi * lo))
            if lo < mid < hi:
                runs.append(self.wrk_run(target, "small", mid))
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pushlake ingest benchmark (wrk): no-op aiohttp vs durable push")
    ap.add_argument("--quick", action="store_true", help="3-second runs, a smoke check of the benchmark itself")
    ap.add_argument("--duration", type=float, help="seconds per wrk run (default 15, or 3 with --quick)")
    ap.add_argument("--connections", type=int, default=64, help="connections at max load (default 64)")
    ap.add_argument("--workers", type=int, default=1, help="pushlake serve --workers (and no-op processes), default 1")
    a = ap.parse_args(argv)
    duration = a.duration or (3.0 if a.quick else 15.0)
    if a.connections < 1 or a.workers < 1 or duration <= 0:
        ap.error("--connections, --workers and --duration must be positive")
    if not PUSHLAKE.exists():
        print(f"{PUSHLAKE} is missing: run `make install` in {ROOT}", file=sys.stderr)
        return 2
    if not TRIP_FIXTURE.exists():
        print(f"trip fixture {TRIP_FIXTURE} is missing", file=sys.stderr)
        return 2

    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="pushlake-bench-"))
    try:
        wrk = ensure_wrk()
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "nproc": os.cpu_count(),
                "pushlake_version": version("pushlake"), "git": git_revision(), "wrk": wrk_version(wrk),
                "python": platform.python_version(), "aiohttp": version("aiohttp"), "duration_s": duration,
                "connections": a.connections, "workers": a.workers, "quick": a.quick,
                "trip_body_bytes": TRIP_FIXTURE.stat().st_size, "event_body_bytes": EVENT_BODY_BYTES,
                "half_load_method": HALF_LOAD_METHOD}
        print(f"nproc {meta['nproc']} | pushlake {meta['pushlake_version']} ({meta['git']}) | {meta['wrk']} | "
              f"python {meta['python']} aiohttp {meta['aiohttp']}")
        print(f"{duration:g} s per run, {a.connections} connections at max load, {a.workers} worker(s); "
              "other work on this machine makes the numbers noisy", flush=True)

        noop_url = start_noop(procs, tmp, a.workers)
        pushlake_url, key = start_pushlake(procs, tmp / "data", tmp, a.workers)
        bench = Bench(wrk, duration, noop_url, pushlake_url, key, tmp / "data")
        for target in ("noop", "pushlake"):  # first requests pay for imports, catalog creation, ...
            bench.wrk_run(target, "small", a.connections, duration=WARMUP_S)

        print("\n(i) small pushes: TRIP_DELETION events, max load", flush=True)
        small = bench.pair("small", a.connections)
        rows = [Row("small, max load", *small)]

        print(f"\n(ii) small pushes at about half load\n    {HALF_LOAD_METHOD}", flush=True)
        half = {}
        sweeps = {}
        for target, max_run in zip(("noop", "pushlake"), small):
            half[target], sweeps[target] = bench.half_load(target, max_run)
        notes = "; ".join(f"{t}: c={half[t].connections} gives {half[t].rps / m.rps:.0%} of max"
                          + (" (even one connection is above half)" if all(r.rps > m.rps / 2 for r in sweeps[t]) else "")
                          for t, m in zip(("noop", "pushlake"), small))
        rows.append(Row("small, ~half load", half["noop"], half["pushlake"], notes,
                        {"sweep": {t: [asdict(r) for r in sweeps[t]] for t in sweeps}}))

        print(f"\n(iii) ~{TRIP_FIXTURE.stat().st_size // 1000} KB trips, max load", flush=True)
        rows.append(Row("trip 170KB, max load", *bench.pair("trip", a.connections)))
        print("\n(iv) the same trip gzip-encoded, max load", flush=True)
        rows.append(Row("trip 170KB gzip, max load", *bench.pair("gzip", a.connections)))
        disk = disk_fsync_mb_s(tmp)
        print(f"\ndisk: sequential write + fdatasync of random data (dd conv=fdatasync): {disk:.0f} MB/s")

        print("\nResults (latencies in ms; ratio = pushlake req/s / no-op req/s; MB/s = request bodies)")
        print(fmt_table(rows))
        print(f"half load: {notes}")
        all_pl = [r.pushlake for r in rows] + sweeps["pushlake"]
        print(f"durability: {'OK' if not bench.failures else 'FAILED'} - after every pushlake run the log gained "
              f">= as many records as 2xx answers (non-2xx total: {sum(r.non_2xx for r in all_pl)})")
        for f in bench.failures:
            print(f"  FAIL {f}")

        results = RESULTS_FILE if a.workers == 1 else RESULTS_FILE.with_name(f"ingest-w{a.workers}.json")
        results.parent.mkdir(parents=True, exist_ok=True)
        summary = common_rows(rows, disk, a.workers)
        results.write_text(json.dumps({"meta": meta, "durable_ok": not bench.failures,
                                       "durability_failures": bench.failures, "disk_fsync_mb_s": disk,
                                       "rows": [r.as_dict() for r in rows], "summary": summary}, indent=2) + "\n")
        print(f"wrote {results.relative_to(ROOT)}")
        return 1 if bench.failures else 0
    except BenchError as e:
        print(f"bench/ingest.py: {e}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def disk_fsync_mb_s(tmp: Path, mb: int = 512) -> float:
    """The disk's fsynced sequential write bandwidth, measured like `dd ... conv=fdatasync`
    from a file of random bytes (zeros compress or dedupe on some disks and mislead)."""
    src, dst = tmp / "random.bin", tmp / "dd.out"
    with open(src, "wb") as f:
        for _ in range(mb // 16):
            f.write(os.urandom(16 << 20))
    t = time.perf_counter()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fdatasync"], check=True, capture_output=True)
    el = time.perf_counter() - t
    src.unlink()
    dst.unlink()
    return mb * 1.048576 / el


def common_rows(rows: list, disk: float, workers: int) -> list[dict]:
    """The ratios of issue 4, in bench/common.py's row format (read by bench/run_all.py)."""
    sys.path.insert(0, str(ROOT))
    from bench.common import row
    by = {r.scenario: r for r in rows}
    w = f" (--workers {workers})" if workers > 1 else ""
    out = []
    for name, target in (("small, max load", 0.8), ("trip 170KB, max load", None), ("trip 170KB gzip, max load", None)):
        r = by.get(name)
        if r:
            out.append(row(f"ingest {name}: req/s{w}", "req/s", "no-op aiohttp", r.noop.rps, r.pushlake.rps, target=target))
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


if __name__ == "__main__":
    sys.exit(main())

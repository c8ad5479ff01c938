"""Sustained-rate benchmark (issue 14, point 1): the highest push rate that ``pushlake serve`` as
deployed (receiver and compactor) sustains with freshness p99 ≤ 1 s, for 170 KB trips and for
small events, and where the CPU goes meanwhile.

Run by hand, from the repository root:
  .venv/bin/python -m bench.sustained_bench [--quick] [--kinds trip,event] [--duration S]
      [--rates R,R,... | --start-trip R --start-event R] [--refine N] [--profile DIR] [--results-dir DIR]

Why it is built this way:
- Open loop: push i is due at start + i / rate whatever the answers, so a server that falls
  behind shows as latency and lag, not as a lower request rate (wrk is closed-loop, and wrk2 is
  not packaged). The client is a small HTTP/1.1 client on asyncio protocols (uvloop), a fixed
  pool of keep-alive connections, requests pre-formatted: about 20 µs of CPU per push, where an
  aiohttp client spends ~100 µs, so at thousands of events per second the load generator does
  not take the receiver's core. A push due while every connection is busy waits in a queue,
  and its latency still counts from when it was due.
- Freshness is what freshness_bench measures: a poller in its own process holds one
  ``queries.connect`` connection and asks, every ``--poll-interval`` s, for the rows past the
  last log offset it has seen (``trips`` for trips, ``trip_deletions`` for the events: small
  TRIP_DELETION pushes with unique itinIds, the bodies of the ingest benchmark); a push is
  fresh when the first query returning it completes, minus when its 200 arrived (both
  CLOCK_MONOTONIC). A push never seen within ``--settle`` s counts as infinitely late.
- The search: each kind starts at ``--start`` pushes/s and doubles until a step fails, then
  bisects ``--refine`` times between the last rate that passed and the first that failed (or
  halves when the first fails). A step passes when every push got a 200, freshness p99 ≤ 1 s,
  ack p99 (from when the push was due) ≤ ``--max-ack-ms`` (1 s: past the receiver's own ceiling
  pushes queue in the client and their acks come ever later, while what is acknowledged can
  still be fresh), and the load generator kept its schedule (it used under 0.9 of a core: past
  that, late sends are the client's, and the step says so instead of passing or failing). The
  end-to-end time (due -> first query returning it) is reported beside.
- Every step runs on a fresh ``serve`` (its own data directory, removed after), warmed up by a
  few pushes of both kinds and given time to go quiet, so no step pays for the previous one's
  backlog or files. ``--quick`` shares one server between its steps.
- CPU: over each load window, cores busy per kind of process (bench/cpu.py: the receiver's
  event loop and its other threads, the compactor, its projection workers and Iceberg mirror,
  the poller, the load generator, the rest of the machine), from /proc, sampled every second
  too (the series is in the result file). ``--profile DIR`` also records py-spy profiles of the
  receiver and the compactor (with its subprocesses) during each step's load.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import secrets
import shutil
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from bench import common
from bench.common import BenchError, Server, Workdir, http, loop_runner, median, pct, push_all, run_main
from bench.cpu import Profiler, ServeCpu, fmt_cores, top_frames
from bench.freshness_bench import trip_template
from bench.ingest_bench import EVENT_PATH, EVENT_PREFIX, EVENT_SUFFIX, TRIP_PATH

NAME = "sustained"
TEAM = "bench"
TARGET_MS = 1000.0
TABLE = {"trip": "trips", "event": "trip_deletions"}
LABEL = {"trip": "170 KB trips", "event": "small events (TRIP_DELETION)"}
TICK_S = 0.001  # the client's shortest sleep: pushes due within it go out together
CLIENT_BOUND = 0.9  # cores: past this the single-threaded load generator cannot keep its schedule


# ---------------------------------------------------------------- the open-loop client

class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time, answers parsed by Content-Length."""

    def __init__(self, client: "OpenLoop") -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.end = -1       # where the current answer ends in buf, once its head is parsed
        self.status = 0
        self.current = -1   # the request in flight (-1: none)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.end < 0:
                h = buf.find(b"\r\n\r\n")
                if h < 0:
                    return
                head = bytes(buf[:h]).lower()
                i = head.find(b"\r\ncontent-length:")
                if i < 0:
                    self.transport.close()  # an answer we cannot frame: counted as an error
                    return
                j = head.find(b"\r\n", i + 2)
                self.status = int(head[9:12])
                self.end = h + 4 + int(head[i + 17:j if j > 0 else None])
            if len(buf) < self.end:
                return
            del buf[:self.end]
            self.end = -1
            self.client._answered(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(self)


@dataclass
class LoadResult:
    rate: float
    n: int
    started: float                                    # time.monotonic() when push 0 was due
    acked: list[float]                                # when each answer arrived (0: none)
    status: list[int]                                 # HTTP status (-1 connection lost, 0 no answer)
    lag_ms: list[float]                               # due -> sent (queue wait and scheduling)
    finished: float = 0.0

    def due(self, i: int) -> float:
        return self.started + i / self.rate

    def ack_ms(self) -> list[float]:
        return [(a - self.due(i)) * 1000 for i, a in enumerate(self.acked) if self.status[i] == 200]

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for s in self.status:
            out[s] = out.get(s, 0) + 1
        return out


class OpenLoop:
    """Requests ``request(i)`` (a list of byte strings) at ``rate`` per second over ``conns``
    keep-alive connections to host:port; a request due while all are busy waits its turn."""

    def __init__(self, host: str, port: int, conns: int, request: Callable[[int], list[bytes]]) -> None:
        self.host, self.port, self.n_conns, self.request = host, port, conns, request
        self.idle: deque[_Conn] = deque()
        self.queue: deque[int] = deque()
        self.res: LoadResult | None = None
        self.pending = 0
        self.all_done: asyncio.Event | None = None
        self.closing = False

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        self._free(conn)

    def _free(self, conn: _Conn) -> None:
        if self.queue:
            self._send(conn, self.queue.popleft())
        else:
            self.idle.append(conn)

    def _send(self, conn: _Conn, i: int) -> None:
        res = self.res
        conn.current = i
        res.lag_ms[i] = (time.monotonic() - res.due(i)) * 1000
        conn.transport.writelines(self.request(i))

    def _finish(self, i: int, status: int) -> None:
        self.res.acked[i] = time.monotonic()
        self.res.status[i] = status
        self.pending -= 1
        if self.pending == 0:
            self.all_done.set()

    def _answered(self, conn: _Conn, status: int) -> None:
        i, conn.current = conn.current, -1
        if i >= 0:
            self._finish(i, status)
        self._free(conn)

    def _lost(self, conn: _Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.current >= 0:
            self._finish(conn.current, -1)
            conn.current = -1
        if not self.closing:  # replace it
            asyncio.get_running_loop().create_task(self._connect())

    async def run(self, rate: float, duration: float, timeout: float = 30.0) -> LoadResult:
        n = max(1, int(rate * duration))
        self.all_done = asyncio.Event()
        await asyncio.gather(*(self._connect() for _ in range(self.n_conns)))
        self.pending = n
        self.res = res = LoadResult(rate, n, time.monotonic() + 0.05, [0.0] * n, [0] * n, [0.0] * n)
        i = 0
        while i < n:
            now = time.monotonic()
            while i < n and res.due(i) <= now:
                if self.idle:
                    self._send(self.idle.popleft(), i)
                else:
                    self.queue.append(i)
                i += 1
            if i < n:  # a timer under uvloop's 1 ms resolution would fire at once: spin
                await asyncio.sleep(max(TICK_S, res.due(i) - time.monotonic()))
        try:
            await asyncio.wait_for(self.all_done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        res.finished = time.monotonic()
        self.closing = True
        for c in list(self.idle):
            c.transport.close()
        return res


def requests_for(kind: str, srv: Server, nonce: str) -> tuple[Callable[[int], list[bytes]], Callable[[int], str]]:
    """(request(i): the bytes of push i, itin(i): its itinId): 24 hex digits, unique per run."""
    if kind == "trip":
        pre, post = trip_template()
        path = TRIP_PATH
    else:
        pre, post, path = EVENT_PREFIX, EVENT_SUFFIX, EVENT_PATH
    length = len(pre) + 24 + len(post)
    head = (f"POST {path} HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\nAuthorization: Bearer {srv.keys[TEAM]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()

    def itin(i: int) -> str:
        return f"{nonce}{i:016x}"

    def request(i: int) -> list[bytes]:
        return [head, pre, itin(i).encode(), post]
    return request, itin


# ---------------------------------------------------------------- the poller (its own process)

def poll(data_dir: str, table: str, ready, stop, out, interval: float) -> None:
    """Record when each row of ``table`` first shows up in a query (``ready`` set after the
    first); send ({itin: monotonic time}, query ms) when ``stop`` is set."""
    import queries
    con = queries.connect(data_dir)
    seen: dict[str, float] = {}
    query_ms: list[float] = []
    last = -1
    try:
        while not stop.is_set():
            t = time.monotonic()
            rows = con.execute(f"SELECT itin_id, log_offset FROM {table} WHERE log_offset > ?", [last]).fetchall()
            done = time.monotonic()
            query_ms.append((done - t) * 1000)
            for itin, off in rows:
                seen.setdefault(itin, done)
                last = max(last, off)
            ready.set()
            stop.wait(interval)
    finally:
        con.close()
        out.send((seen, query_ms))
        out.close()


class Poller:
    def __init__(self, data: Path, table: str, interval: float) -> None:
        ctx = mp.get_context("spawn")
        self.stop, ready = ctx.Event(), ctx.Event()
        self.recv, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=poll, args=(str(data), table, ready, self.stop, send, interval), name="poller")
        self.proc.start()
        send.close()
        if not ready.wait(60):
            self.kill()
            raise BenchError("the poller's first query did not complete within 60 s")

    def result(self) -> tuple[dict[str, float], list[float]]:
        self.stop.set()
        if not self.recv.poll(60):
            raise BenchError("the poller did not report")
        out = self.recv.recv()
        self.proc.join(10)
        return out

    def kill(self) -> None:
        self.stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# ---------------------------------------------------------------- one step

class CpuSeries(threading.Thread):
    """Cores per kind every ``every`` seconds while the load runs."""

    def __init__(self, meter: ServeCpu, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.meter, self.every = meter, every
        self.series: list[dict[str, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        prev = self.meter.sample()
        t0 = prev["_wall"]
        while not self.halt.wait(self.every):
            cur = self.meter.sample()
            self.series.append({"t": round(cur["_wall"] - t0, 2),
                                **{k: round(v, 3) for k, v in ServeCpu.cores(prev, cur).items()}})
            prev = cur


def lag_records(srv: Server) -> int | None:
    try:
        st, body = http("GET", srv.url + "/health", timeout=5)
        comp = json.loads(body).get("compactor") or {}
        return comp.get("lagRecords")
    except (OSError, ValueError):
        return None


def quiet(srv: Server, meter: ServeCpu, timeout: float, below: float = 0.1) -> float:
    """Wait until the compactor has caught up and the serve tree uses under ``below`` cores
    (half-second windows), or ``timeout``; the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        a = meter.sample()
        time.sleep(0.5)
        c = ServeCpu.cores(a, meter.sample())
        busy = sum(v for k, v in c.items() if k not in ("machine", "other", "load generator", "poller"))
        if lag_records(srv) == 0 and busy < below:
            break
    return time.monotonic() - t0


def warm_up(srv: Server) -> None:
    """A trip and a few events, so that the first compaction step (imports, opening the lake)
    is not in a measurement."""
    pre, post = trip_template()
    nonce = secrets.token_hex(4)
    items = [(TRIP_PATH, srv.keys[TEAM], pre + f"{nonce}{0:016x}".encode() + post)]
    items += [(EVENT_PATH, srv.keys[TEAM], EVENT_PREFIX + f"{nonce}eeee{j:012x}".encode() + EVENT_SUFFIX)
              for j in range(16)]
    res = push_all(srv.url, items, 4)
    if res.non_200():
        raise BenchError(f"{res.non_200()} warm-up pushes were not answered 200")


@dataclass
class Step:
    kind: str
    rate: float
    duration: float
    sent: int = 0
    achieved_rate: float = 0.0
    statuses: dict = field(default_factory=dict)
    ack_ms: dict = field(default_factory=dict)
    send_lag_ms: dict = field(default_factory=dict)
    freshness_ms: dict = field(default_factory=dict)
    end_to_end_ms: dict = field(default_factory=dict)
    unseen: int = 0
    poll_query_ms: dict = field(default_factory=dict)
    cores: dict = field(default_factory=dict)
    cores_series: list = field(default_factory=list)
    catch_up_s: float = 0.0
    verdict: str = ""         # pass, fail or client-bound
    why: str = ""
    profiles: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def line(self) -> str:
        f, a = self.freshness_ms, self.ack_ms
        return (f"  {self.kind:5} {self.rate:8.1f}/s: sent {self.sent} ({self.achieved_rate:.1f}/s), "
                f"freshness p50 {common.fmt_ms(f.get('p50'))} p99 {common.fmt_ms(f.get('p99'))} ms, "
                f"ack p50 {common.fmt_ms(a.get('p50'))} p99 {common.fmt_ms(a.get('p99'))} ms, "
                f"end to end p99 {common.fmt_ms(self.end_to_end_ms.get('p99'))} ms, "
                f"unseen {self.unseen}, {self.verdict}{' (' + self.why + ')' if self.why else ''}")


def _dist(xs: list[float]) -> dict:
    return {"p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99), "max": max(xs, default=float("nan"))}


def run_step(kind: str, rate: float, a: argparse.Namespace, wd: Path, srv: Server | None,
             profile_dir: Path | None) -> Step:
    """One rate of one kind: on ``srv`` if given (``--quick``), else on a fresh server."""
    own = srv is None
    data = wd / f"{kind}-{rate:g}"
    step = Step(kind, rate, a.duration)
    poller: Poller | None = None
    try:
        if own:
            srv = Server(data, wd, [TEAM], compactor=True)
            warm_up(srv)
        poller = Poller(srv.data, TABLE[kind], a.poll_interval)
        meter = ServeCpu(srv.pid, srv.port, {"poller": poller.proc.pid})
        quiet(srv, meter, 2 if a.quick else 30)
        request, itin = requests_for(kind, srv, secrets.token_hex(4))
        prof = None
        if profile_dir is not None:
            comp = [k for k in srv.child_pids() if "resource_tracker" not in common.cmdline(k)]
            pids = {"receiver": srv.pid, **({"compactor": comp[0]} if comp else {})}
            prof = Profiler(profile_dir / f"{kind}-{rate:g}", pids, a.duration, subprocesses=("compactor",))
        series = CpuSeries(meter)
        before = meter.sample()
        series.start()
        with loop_runner() as r:
            load = r.run(OpenLoop(srv.host, srv.port, a.connections, request).run(rate, a.duration))
        after = meter.sample()
        series.halt.set()
        series.join()
        step.cores = {k: round(v, 3) for k, v in ServeCpu.cores(before, after).items()}
        step.cores_series = series.series
        if prof is not None:
            step.profiles = {k: {"file": str(v), "top": top_frames(v)} for k, v in prof.wait().items()}
        # every acknowledged push visible (or the settle time over)
        acked = {itin(i): t for i, t in enumerate(load.acked) if load.status[i] == 200}
        t0 = time.monotonic()
        deadline = t0 + a.settle
        while time.monotonic() < deadline and (lag_records(srv) or 0) > 0:
            time.sleep(0.1)
        step.catch_up_s = round(time.monotonic() - t0, 2)
        time.sleep(max(0.2, 3 * a.poll_interval))
        seen, query_ms = poller.result()
        poller = None
    finally:
        if poller is not None:
            poller.kill()
        if own and srv is not None:
            srv.stop()
            shutil.rmtree(data, ignore_errors=True)

    fresh = [(seen[k] - t) * 1000 for k, t in acked.items() if k in seen]
    step.unseen = len(acked) - len(fresh)
    fresh_all = fresh + [math.inf] * step.unseen
    e2e = [(seen[itin(i)] - load.due(i)) * 1000 if itin(i) in seen else math.inf
           for i in range(load.n) if load.status[i] == 200]
    step.sent = load.n
    step.achieved_rate = round(load.n / (load.due(load.n - 1) - load.started + 1 / rate), 1)
    step.statuses = load.statuses()
    step.ack_ms = _dist(load.ack_ms())
    step.send_lag_ms = _dist(load.lag_ms)
    step.freshness_ms = _dist(fresh_all)
    step.end_to_end_ms = _dist(e2e)
    step.poll_query_ms = {"median": median(query_ms), "p99": pct(query_ms, 99)}
    gen = step.cores.get("load generator", 0.0)
    errors = load.n - step.statuses.get(200, 0)
    if errors:
        step.verdict, step.why = "fail", f"{errors} pushes without a 200: {step.statuses}"
    elif step.ack_ms["p99"] > a.max_ack_ms:
        step.verdict, step.why = "fail", f"ack p99 {common.fmt_ms(step.ack_ms['p99'])} ms: the receiver fell behind"
        if gen >= CLIENT_BOUND:
            step.verdict, step.why = "client-bound", step.why + f"; load generator at {gen:.2f} cores"
    elif step.freshness_ms["p99"] > TARGET_MS:
        step.verdict = "fail"
        step.why = f"freshness p99 {common.fmt_ms(step.freshness_ms['p99'])} ms" + (
            f", {step.unseen} never seen" if step.unseen else "")
        if gen >= CLIENT_BOUND:
            step.verdict, step.why = "client-bound", step.why + f"; load generator at {gen:.2f} cores"
    elif gen >= CLIENT_BOUND:
        step.verdict, step.why = "client-bound", f"load generator at {gen:.2f} cores"
    else:
        step.verdict = "pass"
    return step


# ---------------------------------------------------------------- the search

def search(kind: str, a: argparse.Namespace, wd: Path, shared: Server | None) -> list[Step]:
    steps: list[Step] = []

    def run(rate: float) -> Step:
        s = run_step(kind, rate, a, wd, shared, a.profile)
        print(s.line(), flush=True)
        print(f"        cores: {fmt_cores(s.cores)}", flush=True)
        steps.append(s)
        return s

    if a.rates:
        for r in a.rates:
            run(r)
        return steps
    start = a.start_trip if kind == "trip" else a.start_event
    good, bad = None, None
    rate = start
    for _ in range(a.max_steps):
        s = run(rate)
        if s.passed:
            good = rate
            if bad is not None:
                break
            rate *= 2
        else:
            bad = rate
            if good is not None:
                break
            rate /= 2
    if good is not None and bad is not None:
        lo, hi = good, bad
        for _ in range(a.refine):
            mid = round(math.sqrt(lo * hi), 1)
            if not lo < mid < hi:
                break
            if run(mid).passed:
                lo = mid
            else:
                hi = mid
    return steps


def finite(x):
    """The result file's values with inf and nan (a push never seen) as null: strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def best(steps: list[Step]) -> Step | None:
    ok = [s for s in steps if s.passed]
    return max(ok, key=lambda s: s.rate) if ok else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pushlake sustained-rate benchmark: the highest open-loop push rate "
                                             "with freshness p99 <= 1 s, and where the CPU goes")
    ap.add_argument("--quick", action="store_true", help="smoke run: one short step of trips, two of events, on one server")
    ap.add_argument("--kinds", default="trip,event", help="trip, event or both (default trip,event)")
    ap.add_argument("--duration", type=float, help="seconds of load per step (default 20; 1 with --quick)")
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                    help="run these rates (pushes/s) instead of searching")
    ap.add_argument("--start-trip", type=float, default=40.0, help="first trip rate of the search (default 40/s)")
    ap.add_argument("--start-event", type=float, default=1000.0, help="first event rate of the search (default 1000/s)")
    ap.add_argument("--max-steps", type=int, default=8, help="doubling/halving steps at most (default 8)")
    ap.add_argument("--refine", type=int, default=3, help="bisection steps after the bracket (default 3)")
    ap.add_argument("--connections", type=int, default=64, help="the client's keep-alive connections (default 64)")
    ap.add_argument("--max-ack-ms", type=float, default=1000.0,
                    help="a step also fails when ack p99 (due -> 200) is over this: the receiver did not keep up "
                         "with the rate, whatever the freshness of what it acknowledged (default 1000)")
    ap.add_argument("--poll-interval", type=float, default=0.05, help="seconds between poller queries (default 0.05)")
    ap.add_argument("--settle", type=float, default=20.0,
                    help="seconds to wait after the load for the compactor to catch up (default 20)")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy profiles of each step's load into DIR")
    ap.add_argument("--workdir", type=Path, help="where the data goes (default: a temporary directory, removed)")
    common.add_results_arg(ap)
    a = ap.parse_args(argv)
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(TABLE):
        ap.error("--kinds takes trip, event or both")
    a.duration = a.duration or (1.0 if a.quick else 20.0)
    if a.duration <= 0 or a.connections < 1 or (a.rates and min(a.rates) <= 0):
        ap.error("--duration, --connections and --rates must be positive")

    wd = Workdir(a.workdir, "pushlake-bench-sustained-")
    shared: Server | None = None
    results: dict[str, list[Step]] = {}
    try:
        if a.quick:
            shared = Server(wd.path / "quick-data", wd.path, [TEAM], compactor=True)
            warm_up(shared)
        for kind in kinds:
            print(f"\n{LABEL[kind]}: open loop, {a.duration:g} s per step, {a.connections} connections, "
                  f"poller every {a.poll_interval:g} s", flush=True)
            if a.quick:
                rates = a.rates or ([20.0] if kind == "trip" else [100.0, 200.0])
                q = argparse.Namespace(**{**vars(a), "rates": rates, "settle": min(a.settle, 10.0)})
                results[kind] = search(kind, q, wd.path, shared)
            else:
                results[kind] = search(kind, a, wd.path, None)
    finally:
        if shared is not None:
            shared.stop()
        wd.cleanup()

    rows, notes = [], []
    for kind, steps in results.items():
        b = best(steps)
        label = LABEL[kind]
        bounded = [s for s in steps if s.verdict == "client-bound"]
        rows.append(common.row(f"sustained {label}: highest rate, freshness p99 <= 1 s", "pushes/s", "-", None,
                               b.rate if b else None))
        if b:
            rows.append(common.row(f"sustained {label}: freshness p99 at that rate", "ms", "1 s target", TARGET_MS,
                                   b.freshness_ms["p99"], higher_is_better=False, target=1.0))
            rows.append(common.row(f"sustained {label}: ack p99 at that rate", "ms", "-", None, b.ack_ms["p99"],
                                   higher_is_better=False))
            notes.append(f"{label}: {b.rate:g}/s passed (freshness p50 {b.freshness_ms['p50']:.0f} ms, "
                         f"p99 {b.freshness_ms['p99']:.0f} ms; ack p99 {b.ack_ms['p99']:.1f} ms; end to end p99 "
                         f"{b.end_to_end_ms['p99']:.0f} ms); cores over its "
                         f"load: {fmt_cores(b.cores)}")
        failed = sorted((s for s in steps if s.verdict == "fail"), key=lambda s: s.rate)
        if failed:
            f = failed[0]
            notes.append(f"{label}: {f.rate:g}/s failed ({f.why}); cores: {fmt_cores(f.cores)}")
        if bounded:
            notes.append(f"{label}: the load generator was the limit at " +
                         ", ".join(f"{s.rate:g}/s" for s in bounded))
    print()
    common.print_rows(rows)
    for n in notes:
        print(" ", n)
    common.write_result(NAME, rows, args=vars(a), notes=notes, results_dir=a.results_dir,
                        extra={"steps": finite({k: [asdict(s) for s in v] for k, v in results.items()})})
    return 0


if __name__ == "__main__":
    run_main(main)

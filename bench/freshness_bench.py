"""Freshness benchmark (issue 4, items 4 and 7): time from a push's 200 to the first query that
returns it, under a steady load, and the receiver's memory under that load.

Run by hand, from the repository root:
  .venv/bin/python -m bench.freshness_bench [--quick] [--rate TRIPS_PER_S] [--duration S]
                                            [--poll-interval S] [--workdir DIR] [--results-dir DIR]

Why it is built this way:
- A real ``pushlake serve`` with its compactor (the configuration freshness depends on) receives
  the 170 KB 33-minute fixture trip, each push with its own itinId, at a fixed rate (open loop:
  push i is sent at start + i / rate whether or not earlier ones were answered, so a slow server
  cannot slow the load down and hide its own lag). The client records when each 200 arrived.
- "Half the maximum": the trip-push ceiling of the whole service is the compactor (projection
  costs ~9 ms of CPU per 170 KB trip here, so one compactor process manages ~100 trips/s, far
  below the receiver's ~700/s), so the default 50 trips/s is meant as about half. The run reads
  the compactor's own log lines (records and seconds per step) and reports how busy it was and
  its throughput at the batch sizes this load produced, so "half load" is checked, not assumed
  (a lower bound of its ceiling: under a heavier load its steps batch more records and each
  step's fixed cost, files and fsyncs and a catalog commit, is shared by more trips).
- A poller in its own process (so that it neither competes with the load generator's event
  loop nor shares its GIL) holds ONE ``queries.connect`` connection, which re-points itself at
  every new snapshot, and queries ``trips`` for itinIds past the last log offset it has seen,
  every ``--poll-interval`` seconds. A trip counts as fresh when the query that first returns
  it completes; both processes use CLOCK_MONOTONIC, which is system-wide. freshness = that time
  minus the time the push's 200 arrived; its resolution is the poll interval plus one query.
- There is no natural peer: the peer value is the target (1,000 ms for p99), and the receiver's
  peak RSS (VmHWM of the ``serve`` process, which runs the receiver; the compactor is a child
  process, reported separately) is compared with the 200 MB target.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

import queries
from bench import common
from bench.common import FIXTURES, BenchError, Server, Workdir, loop_runner, median, open_loop, pct, run_main

NAME = "freshness"
TEAM = "bench"
TRIP_PATH = "/push/trip"
COMPACTED = re.compile(r"compacted (\d+) records .* in ([\d.]+)s")


# ---------------------------------------------------------------- the poller (its own process)

def poll(data_dir: str, stop: mp.synchronize.Event, out: mp.connection.Connection, interval: float) -> None:
    """Record when each trip first shows up in a query; send {itin: monotonic time} and the
    query times (ms) when ``stop`` is set."""
    con = queries.connect(data_dir)
    seen: dict[str, float] = {}
    query_ms: list[float] = []
    last = -1
    try:
        while not stop.is_set():
            t = time.monotonic()
            rows = con.execute("SELECT itin_id, log_offset FROM trips WHERE log_offset > ?", [last]).fetchall()
            done = time.monotonic()
            query_ms.append((done - t) * 1000)
            for itin, off in rows:
                seen.setdefault(itin, done)
                last = max(last, off)
            stop.wait(interval)
    finally:
        con.close()
        out.send((seen, query_ms))
        out.close()


# ---------------------------------------------------------------- the load (open loop)

@dataclass
class Load:
    acked: dict[str, float] = field(default_factory=dict)   # itin -> monotonic time of its 200
    ack_ms: list[float] = field(default_factory=list)        # scheduled send -> 200
    statuses: dict[int, int] = field(default_factory=dict)
    sent: int = 0
    started: float = 0.0
    finished: float = 0.0


def trip_template() -> tuple[bytes, bytes]:
    """The fixture around its itinId, so each push only needs a new id in the middle."""
    raw = (FIXTURES / "trip_33min.json").read_bytes()
    itin = orjson.loads(raw)["itinId"].encode()
    pre, sep, post = raw.partition(b'"' + itin + b'"')
    if not sep:
        raise BenchError("the fixture's itinId was not found in its bytes")
    return pre + b'"', b'"' + post


async def steady_load(url: str, key: str, rate: float, duration: float, max_conns: int) -> Load:
    import aiohttp
    pre, post = trip_template()
    nonce = secrets.token_hex(4)
    load = Load()
    hdr = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(limit=max_conns)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as s:
        async def one(i: int, scheduled: float) -> None:
            itin = f"{nonce}{i:016x}"
            try:
                async with s.post(url + TRIP_PATH, data=pre + itin.encode() + post, headers=hdr) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = -1
            now = time.monotonic()
            load.statuses[status] = load.statuses.get(status, 0) + 1
            if status == 200:
                load.acked[itin] = now
                load.ack_ms.append((now - scheduled) * 1000)

        load.started = time.monotonic()
        load.sent = await open_loop(rate, duration, one)
        load.finished = time.monotonic()
    return load


class RssSampler(threading.Thread):
    """Samples VmRSS of the given processes every half second (their VmHWM is read at the end)."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: dict[str, list[float]] = {k: [] for k in pids}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for k, pid in self.pids.items():
                kb = common.proc_kb(pid, "VmRSS")
                if kb:
                    self.samples[k].append(kb / 1024)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pushlake freshness benchmark: 200 -> first query that returns the trip")
    ap.add_argument("--quick", action="store_true", help="smoke mode: 4 s of load")
    ap.add_argument("--rate", type=float, default=50.0, help="170 KB trips per second (default 50, about half "
                                                              "of what one compactor projects)")
    ap.add_argument("--duration", type=float, help="seconds of load (default 120; 4 with --quick)")
    ap.add_argument("--poll-interval", type=float, default=0.05, help="seconds between poller queries (default 0.05)")
    ap.add_argument("--max-connections", type=int, default=256, help="client connection cap (default 256)")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds to wait after the load for the last trips")
    ap.add_argument("--workdir", type=Path, help="where the data goes (default: a temporary directory, removed)")
    common.add_results_arg(ap)
    a = ap.parse_args(argv)
    a.duration = a.duration or (4.0 if a.quick else 120.0)
    if a.rate <= 0 or a.duration <= 0 or a.poll_interval < 0:
        ap.error("--rate and --duration must be positive")

    wd = Workdir(a.workdir, "pushlake-bench-freshness-")
    data = wd.path / "freshness-data"
    srv: Server | None = None
    poller: mp.Process | None = None
    stop = mp.get_context("spawn").Event()
    try:
        if data.exists():
            raise BenchError(f"{data} already exists: remove it or choose another --workdir")
        srv = Server(data, wd.path, [TEAM], compactor=True)
        kids = [k for k in srv.child_pids() if "resource_tracker" not in common.cmdline(k)]
        pids = {"receiver": srv.pid} | ({"compactor": kids[0]} if len(kids) == 1 else {})
        ctx = mp.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        poller = ctx.Process(target=poll, args=(str(data), stop, send, a.poll_interval), name="poller")
        poller.start()
        send.close()
        time.sleep(1.0)  # the poller's imports and first query
        sampler = RssSampler(pids)
        sampler.start()
        pre, post = trip_template()
        print(f"{a.rate:g} trips/s of {(len(pre) + len(post) + 24) / 1000:.0f} KB for {a.duration:g} s "
              f"(open loop), poller every {a.poll_interval:g} s", flush=True)
        with loop_runner() as r:
            load = r.run(steady_load(srv.url, srv.keys[TEAM], a.rate, a.duration, a.max_connections))
        achieved = load.sent / (load.finished - load.started)
        print(f"  sent {load.sent} ({achieved:.1f}/s over {load.finished - load.started:.1f} s incl. the last answers), "
              f"answers {load.statuses}", flush=True)
        # let the compactor and the poller catch up with the last acknowledged trips
        deadline = time.monotonic() + a.settle
        while time.monotonic() < deadline:
            with queries.connect(data) as con:
                n = con.execute("SELECT count(*) FROM trips").fetchall()[0][0]
            if n >= len(load.acked):
                break
            time.sleep(0.2)
        time.sleep(max(0.2, 3 * a.poll_interval))
        hwm = {k: common.proc_kb(pid, "VmHWM") / 1024 for k, pid in pids.items()}
        sampler.stop.set()
        stop.set()
        if not recv.poll(30):
            raise BenchError("the poller did not report")
        seen, query_ms = recv.recv()
        poller.join(10)
        serve_log = srv.log_text()
    finally:
        stop.set()
        if poller is not None:
            poller.join(10)
            if poller.is_alive():
                poller.kill()
        if srv is not None:
            srv.stop()
        wd.cleanup()

    fresh = [(seen[i] - t) * 1000 for i, t in load.acked.items() if i in seen]
    unseen = len(load.acked) - len(fresh)
    comp = [(int(n), float(s)) for n, s in COMPACTED.findall(serve_log)]
    comp_records, comp_s = sum(n for n, _ in comp), sum(s for _, s in comp)
    capacity = comp_records / comp_s if comp_s else None
    elapsed = load.finished - load.started
    p50, p99 = pct(fresh, 50), pct(fresh, 99)
    print(f"  freshness (200 -> first query returning it): p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
          f"max {max(fresh, default=float('nan')):.0f} ms; {unseen} acknowledged trips never seen", flush=True)
    print(f"  poll query median {median(query_ms):.1f} ms (p99 {pct(query_ms, 99):.1f} ms); push 200 p50 "
          f"{pct(load.ack_ms, 50):.0f} ms, p99 {pct(load.ack_ms, 99):.0f} ms", flush=True)
    if capacity:
        print(f"  compactor: {comp_records} records in {len(comp)} steps ({comp_records / len(comp):.1f} per step), "
              f"busy {comp_s:.1f} s = {comp_s / elapsed:.0%} of the load time; {capacity:.0f} trips per busy second "
              f"at these batch sizes, so {a.rate:g}/s used {a.rate / capacity:.0%} of it", flush=True)
    print("  peak RSS (VmHWM): " + ", ".join(f"{k} {v:.0f} MB" for k, v in hwm.items()), flush=True)

    rows = [
        common.row("freshness p99 (200 -> first query)", "ms", "target", 1000, p99, higher_is_better=False, target=1.0),
        common.row("freshness p50 (200 -> first query)", "ms", "target", 1000, p50, higher_is_better=False),
        common.row("receiver peak RSS (VmHWM)", "MB", "target", 200, hwm.get("receiver"), higher_is_better=False,
                   target=1.0),
    ]
    if "compactor" in hwm:
        rows.append(common.row("compactor peak RSS (VmHWM)", "MB", "-", None, hwm["compactor"], higher_is_better=False))
    rows.append(common.row("push 200 latency p99 under this load", "ms", "-", None, pct(load.ack_ms, 99),
                           higher_is_better=False))
    print()
    common.print_rows(rows)
    notes = [
        f"Load: {load.sent} pushes of the 170 KB 33-minute fixture (unique itinIds) at {a.rate:g}/s for "
        f"{a.duration:g} s, open loop; answers {load.statuses}; achieved {achieved:.1f}/s.",
        f"Freshness = completion of the first poll query returning the trip - arrival of its 200 "
        f"(CLOCK_MONOTONIC, both processes). Poll every {a.poll_interval:g} s through one queries.connect "
        f"connection; poll query median {median(query_ms):.1f} ms, p99 {pct(query_ms, 99):.1f} ms "
        "(the resolution of the measure).",
        f"{len(fresh)} trips measured, p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(fresh, default=float('nan')):.0f} ms; "
        f"{unseen} acknowledged trips not seen within {a.settle:g} s after the load; "
        f"{sum(1 for f in fresh if f < 0)} seen before their 200 arrived (negative freshness).",
        f"Push 200 latency (scheduled send -> 200): p50 {pct(load.ack_ms, 50):.0f} ms, p99 {pct(load.ack_ms, 99):.0f} ms.",
        "Peak RSS = VmHWM: " + ", ".join(f"{k} {v:.0f} MB" for k, v in hwm.items())
        + "; RSS sampled every 0.5 s: " + ", ".join(f"{k} median {median(v):.0f} MB" for k, v in sampler.samples.items() if v)
        + ". The receiver is the `pushlake serve` process itself (one worker); the compactor is its child.",
    ]
    if capacity:
        notes.append(f"Compactor (the service's trip ceiling; the receiver alone takes ~700/s): {comp_records} records "
                     f"in {len(comp)} steps ({comp_records / len(comp):.1f} per step), busy {comp_s:.1f} s of {elapsed:.1f} s; "
                     f"{capacity:.0f} trips per busy second at these batch sizes, so the load used {a.rate / capacity:.0%} "
                     "of it (a lower bound of its ceiling: bigger batches share each step's fixed cost).")
    args = vars(a)
    common.write_result(NAME, rows, args=args, notes=notes, results_dir=a.results_dir)
    return 0 if not unseen else 1


if __name__ == "__main__":
    run_main(main)

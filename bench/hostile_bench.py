"""Hostile readers benchmark (issue 9, part 3): push latency and server memory while teams run
the queries that used to hurt everyone.

Run by hand, from the repository root:
  .venv/bin/python -m bench.hostile_bench [--quick] [--rate 100] [--baseline 15] [--hostile 50]
                                          [--trips 200] [--workdir DIR] [--results-dir DIR]

How it is built:
- ``pushlake serve`` runs with its compactor on a fresh data directory holding ``--trips`` 33-minute
  trips spread over the teams ``team-000`` (hostile queries), ``team-001`` (a bystander),
  ``team-002`` (the pusher) and ``team-003`` (a second hostile team: unread exports), appended to
  the log and compacted before the server starts, and one hyper-admin.
- A steady stream of small pushes (``TRIP_DELETION`` events of ``team-002``, an aiohttp client
  sending ``--rate`` requests per second on a fixed schedule, each timed from its scheduled start,
  so a stalled server shows as latency and not as fewer requests) runs for the whole run. The
  first ``--baseline`` seconds are the baseline window; then for ``--hostile`` seconds:
  ``team-000`` runs ``SELECT len(range(200000000))``, a 20,000-branch ``UNION ALL`` and
  ``SELECT range(1000) AS l FROM range(100000)`` (a 390 MB JSON result before the byte cap);
  ``team-003`` starts two exports of trip_samples and reads none of it for ``--stall`` seconds (45 by
  default: the server's 30 s write timeout should have cut them off by then); 300 wrong Basic passwords
  of the hyper-admin arrive, 20 at a time; and the bystander runs ``SELECT count(*) FROM trips``
  every second (its latency and status are reported).
- Every 0.2 s the RSS of the server process (the receiver), of the compactor, and of the query
  processes (the zygote and its children, summed) is sampled from /proc.
Results: bench/results/hostile.json (peer = the baseline window of the same run).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import socket
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
import orjson

from bench import common
from bench.common import BenchError, Server, Workdir, open_loop, pct, run_main
from bench.gen import trip_bodies, write_log

NAME = "hostile"
PW = "PnsPYthv4N?zI%CK"


def rss_mb(pid: int) -> float:
    return common.proc_kb(pid, "VmRSS") / 1024


class Sampler(threading.Thread):
    """RSS of the receiver, the compactor and the query processes, every 0.2 s."""

    def __init__(self, server_pid: int):
        super().__init__(daemon=True)
        self.pid = server_pid
        self.samples: list[tuple[float, float, float, float, int]] = []  # t, server, compactor, queries, n
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            kids = common.descendants(self.pid)
            queries = [k for k in kids if "queries.worker" in common.cmdline(k)]  # the zygote and its forks
            compactor = [k for k in kids if k not in queries]
            self.samples.append((time.monotonic(), rss_mb(self.pid), sum(rss_mb(k) for k in compactor),
                                 sum(rss_mb(k) for k in queries), len(queries)))

    def window(self, t0: float, t1: float) -> list[tuple]:
        return [s for s in self.samples if t0 <= s[0] < t1]


async def pusher(url: str, key: str, rate: float, stop_at: float, out: list) -> None:
    """Pushes at a fixed schedule; each latency counts from its scheduled time."""
    headers = Server.headers(key)
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one(n: int, due: float) -> None:
            body = orjson.dumps({"itinId": f"{n:024x}", "event": "TRIP_DELETION", "date": "2025-02-01T09:12:47.000+0000"})
            try:
                async with s.post(url + "/push/trip/event", data=body, headers=headers,
                                  timeout=aiohttp.ClientTimeout(total=60)) as r:
                    await r.read()
                    out.append((due, time.monotonic() - due, r.status))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                out.append((due, time.monotonic() - due, 0))
        await open_loop(rate, stop_at - time.monotonic(), one)


async def query(s: aiohttp.ClientSession, url: str, headers: dict, sql: str, log: list, label: str,
                read: bool = True) -> None:
    t = time.monotonic()
    try:
        async with s.post(url + "/v1/query", data=orjson.dumps({"sql": sql}), headers=headers,
                          timeout=aiohttp.ClientTimeout(total=120)) as r:
            n = len(await r.read()) if read else 0
            log.append({"what": label, "status": r.status, "seconds": round(time.monotonic() - t, 3), "bytes": n,
                        "truncated": r.headers.get("X-Pushlake-Truncated"),
                        "error": None if r.status == 200 else (orjson.loads(await r.read()) if n < 10000 else None)})
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        log.append({"what": label, "status": 0, "seconds": round(time.monotonic() - t, 3), "error": repr(e)})


async def stalled_export(host: str, port: int, key: str, stall: float, log: list) -> None:
    """An export whose client reads the status line and nothing more (small receive buffer) for
    ``stall`` seconds, then whatever is left."""
    t = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(f"GET /v1/export/trip_samples?format=jsonl HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {key}\r\n\r\n".encode())
    await writer.drain()
    status = (await reader.readline()).decode().strip()
    log.append({"what": "unread export (status line)", "status": status, "seconds": round(time.monotonic() - t, 3)})
    await asyncio.sleep(stall)  # never read: the server cuts it off after its write timeout
    rest, closed = 0, False
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(1 << 20), min(5.0, stall))
            if not chunk:
                closed = True
                break
            rest += len(chunk)
    except asyncio.TimeoutError:
        pass
    except ConnectionError:
        closed = True
    writer.close()
    log.append({"what": f"unread export (drained after {stall:g} s)", "bytes_buffered": rest, "cut_by_server": closed})


async def passwords(url: str, n: int, log: list) -> None:
    bad = "Basic " + base64.b64encode(b"root@example.com:wrong-Password-1!").decode()
    statuses: dict[str, int] = {}
    t = time.monotonic()
    sem = asyncio.Semaphore(20)
    async with aiohttp.ClientSession() as s:
        async def one():
            async with sem:
                async with s.post(url + "/v1/query", data=b'{"sql":"SELECT 1"}', headers={"Authorization": bad}) as r:
                    await r.read()
                    statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        await asyncio.gather(*[one() for _ in range(n)])
    log.append({"what": f"{n} wrong passwords", "statuses": statuses, "seconds": round(time.monotonic() - t, 3)})


async def bystander(url: str, key: str, stop_at: float, out: list) -> None:
    h = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < stop_at:
            t = time.monotonic()
            try:
                async with s.post(url + "/v1/query", data=b'{"sql":"SELECT count(*) AS n FROM trips"}', headers=h,
                                  timeout=aiohttp.ClientTimeout(total=60)) as r:
                    await r.read()
                    out.append((t, time.monotonic() - t, r.status))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                out.append((t, time.monotonic() - t, 0))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t)))


async def hostile(args, url: str, host: str, port: int, keys: dict, log: list) -> None:
    h0 = {"Authorization": f"Bearer {keys['team-000']['adminApiKey']}"}
    union = " UNION ALL ".join(f"SELECT {i} AS x" for i in range(args.union))
    async with aiohttp.ClientSession() as s:
        exports = [asyncio.ensure_future(stalled_export(host, port, keys["team-003"]["adminApiKey"], args.stall, log))
                   for _ in range(2)]
        pw = asyncio.ensure_future(passwords(url, args.passwords, log))
        await asyncio.gather(query(s, url, h0, "SELECT len(range(200000000)) AS n", log, "len(range(200M))"),
                             query(s, url, h0, union, log, f"{args.union:,}-branch UNION ALL"))
        await query(s, url, h0, "SELECT range(1000) AS l FROM range(100000)", log, "390 MB result (JSON)")
        await query(s, url, h0, "SELECT len(range(200000000)) AS n", log, "len(range(200M)) again")
        await pw
        await asyncio.gather(*exports)


async def run(args, url: str, host: str, port: int, keys: dict, sampler: Sampler) -> dict:
    pushes: list = []
    by: list = []
    log: list = []
    t0 = time.monotonic()
    t_hostile = t0 + args.baseline
    t_end = t_hostile + args.hostile
    push_task = asyncio.ensure_future(pusher(url, keys["team-002"]["pushApiKey"], args.rate, t_end, pushes))
    by_task = asyncio.ensure_future(bystander(url, keys["team-001"]["adminApiKey"], t_end, by))
    await asyncio.sleep(max(0.0, t_hostile - time.monotonic()))
    h_task = asyncio.ensure_future(hostile(args, url, host, port, keys, log))
    await push_task
    await by_task
    await h_task
    return {"t0": t0, "t_hostile": t_hostile, "t_end": t_end, "pushes": pushes, "bystander": by, "log": log}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100.0, help="small pushes per second (default 100)")
    ap.add_argument("--baseline", type=float, default=15.0, help="seconds without hostile queries (default 15)")
    ap.add_argument("--hostile", type=float, default=50.0, help="seconds with them (default 50)")
    ap.add_argument("--trips", type=int, default=200, help="33-minute trips of team-000 (default 200)")
    ap.add_argument("--stall", type=float, default=45.0,
                    help="seconds the two exports are left unread (default 45: past the 30 s write timeout)")
    ap.add_argument("--union", type=int, default=20_000, help="branches of the UNION ALL (default 20,000)")
    ap.add_argument("--passwords", type=int, default=300, help="wrong hyper-admin passwords (default 300)")
    ap.add_argument("--workdir", type=Path)
    common.add_results_arg(ap)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 8 trips, 30 pushes/s, 3 + 5 s, exports unread for 3 s (not long enough "
                         "to be cut off), a 2,000-branch UNION ALL, 60 wrong passwords")
    args = ap.parse_args(argv)
    if args.quick:
        args.trips, args.rate, args.baseline, args.hostile = 8, 30.0, 3.0, 5.0
        args.stall, args.union, args.passwords = 3.0, 2_000, 60
    work = Workdir(args.workdir, "pushlake-hostile-")
    data = work.path / "data"
    data.mkdir(exist_ok=True)
    srv: Server | None = None
    try:
        from pushlake.hyperadmins import HyperAdmins
        a = HyperAdmins(data)
        a.create("root@example.com", "Root", "Admin", PW)
        a.close()
        write_log(data, trip_bodies(args.trips, teams=4))  # team-000 .. team-003
        out = subprocess.run([common.PUSHLAKE, "compact", "--data", str(data)], capture_output=True, text=True)
        if out.returncode != 0:
            raise BenchError(f"pushlake compact failed ({out.returncode}): {out.stderr.strip()}")
        srv = Server(data, work.path, ["team-000", "team-001", "team-002", "team-003"], compactor=True,
                     healthy=(200, 503))
        sampler = Sampler(srv.pid)
        sampler.start()
        res = asyncio.run(run(args, srv.url, srv.host, srv.port, srv.creds, sampler))
        sampler.stop.set()
        sampler.join()
    finally:
        if srv is not None:
            srv.stop()
        work.cleanup()

    def push_stats(t0: float, t1: float) -> tuple[float, float, int, int]:
        lat = [lt * 1000 for due, lt, st in res["pushes"] if t0 <= due < t1 and st == 200]
        bad = sum(1 for due, _, st in res["pushes"] if t0 <= due < t1 and st != 200)
        return pct(lat, 50), pct(lat, 99), len(lat), bad

    def mem(t0: float, t1: float) -> tuple[float, float, float]:
        w = sampler.window(t0, t1)
        return (max((s[1] for s in w), default=0.0), max((s[2] for s in w), default=0.0),
                max((s[3] for s in w), default=0.0))
    b = push_stats(res["t0"] + 2, res["t_hostile"])  # the first 2 s warm the connections up
    h = push_stats(res["t_hostile"], res["t_end"])
    mb, mh = mem(res["t0"], res["t_hostile"]), mem(res["t_hostile"], res["t_end"])
    by_b = [lt * 1000 for t, lt, st in res["bystander"] if t < res["t_hostile"] and st == 200]
    by_h = [lt * 1000 for t, lt, st in res["bystander"] if t >= res["t_hostile"] and st == 200]
    by_fail = [st for t, lt, st in res["bystander"] if t >= res["t_hostile"] and st != 200]
    peer = "baseline window (same run)"
    rows = [
        common.row("push latency p50", "ms", peer, b[0], h[0], higher_is_better=False),
        common.row("push latency p99", "ms", peer, b[1], h[1], higher_is_better=False),
        common.row("pushes answered 200", "count", peer, b[2], h[2]),
        common.row("pushes not 200", "count", peer, b[3], h[3], higher_is_better=False),
        common.row("server (receiver) RSS max", "MB", peer, mb[0], mh[0], higher_is_better=False),
        common.row("compactor RSS max", "MB", peer, mb[1], mh[1], higher_is_better=False),
        common.row("query processes RSS max (sum)", "MB", peer, mb[2] or None, mh[2], higher_is_better=False),
        common.row("bystander SELECT count(*) p50", "ms", peer, pct(by_b, 50), pct(by_h, 50), higher_is_better=False),
        common.row("bystander SELECT count(*) max", "ms", peer, max(by_b[1:], default=None), max(by_h, default=None),
                   higher_is_better=False),
    ]
    common.print_rows(rows)
    print(f"bystander queries during the hostile window: {len(by_h)} ok, failures {by_fail}")
    for entry in res["log"]:
        print(" ", orjson.dumps(entry).decode()[:300])
    notes = [f"rate {args.rate:g} pushes/s; baseline {args.baseline:g} s, hostile {args.hostile:g} s; exports unread "
             f"for {args.stall:g} s, {args.union:,}-branch UNION ALL, {args.passwords} wrong passwords",
             f"bystander during the hostile window: {len(by_h)} ok, failures {by_fail}"] + \
        [orjson.dumps(e).decode()[:300] for e in res["log"]]
    common.write_result(NAME, rows, vars(args), notes, results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    run_main(main)

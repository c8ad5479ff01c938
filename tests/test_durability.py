"""Crashes: a receiver killed mid-stream, a torn log tail, a compactor killed mid-commit."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import zlib
from pathlib import Path

import aiohttp
import duckdb
import orjson
import pytest

import queries
from ingest.log import LogReader, LogWriter, list_segments
from ingest.record import Kind
from tests.helpers import ServerProcess, create_team, deletion, itin_id, run_cli, trip


async def push_until_killed(server: ServerProcess, key: str, n_clients: int = 16, kill_after: float = 1.5):
    """Push unique trips and crashes from concurrent clients; SIGKILL the server meanwhile.
    Returns the keys that were acknowledged with a 200."""
    acked: list[tuple[str, str]] = []
    counter = iter(range(10**9))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession):
        while not stop.is_set():
            n = next(counter)
            if n % 3 == 2:
                kind, body, k = "crash", {"crashId": f"crash-{n}", "probability": n}, f"crash-{n}"
            else:
                kind, body, k = "trip", trip(itin_id(n)), itin_id(n)
            try:
                async with session.post(f"{server.url}/push/{kind}", data=orjson.dumps(body), headers=headers) as r:
                    if r.status == 200:
                        acked.append((kind, k))
            except (aiohttp.ClientError, ConnectionError):
                await asyncio.sleep(0.01)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        tasks = [asyncio.create_task(client(s)) for _ in range(n_clients)]
        await asyncio.sleep(kill_after)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*tasks)
    return acked


def assert_all_once(data: Path, acked: list[tuple[str, str]]) -> None:
    con = queries.connect(data)
    trips = [r[0] for r in con.execute("SELECT itin_id FROM trips").fetchall()]
    crashes = [r[0] for r in con.execute("SELECT crash_id FROM crashes").fetchall()]
    assert len(trips) == len(set(trips)), "a trip appears twice"
    assert len(crashes) == len(set(crashes)), "a crash appears twice"
    missing = {k for kind, k in acked if kind == "trip"} - set(trips)
    missing |= {k for kind, k in acked if kind == "crash"} - set(crashes)
    assert not missing, f"{len(missing)} acknowledged pushes lost"
    dup_samples = con.execute("SELECT itin_id, count(*) c FROM trip_samples GROUP BY 1 HAVING c != 10").fetchall()
    assert dup_samples == []


async def test_sigkill_while_pushing_loses_and_doubles_nothing(tmp_path):
    data = tmp_path / "data"
    key = create_team(data, "acme")
    server = ServerProcess(data)
    acked = await push_until_killed(server, key)
    server.stop()
    assert len(acked) > 50
    # restart (recovery of the log tail), let the compactor catch up, stop cleanly
    server = ServerProcess(data)
    server.stop()
    run_cli("compact", data=data)
    assert_all_once(data, acked)
    assert json.loads(run_cli("check", "--json", data=data).stdout)["ok"] is True


def _last_segment(data: Path) -> Path:
    return list_segments(data / "log" / "p0")[-1][1]


@pytest.mark.parametrize("tail", ["partial frame", "bad crc", "zeros"])
async def test_torn_tail_is_truncated_and_reported(tmp_path, tail):
    data = tmp_path / "data"
    key = create_team(data, "acme")
    server = ServerProcess(data)
    acked = await push_until_killed(server, key, kill_after=0.8)
    server.stop()
    seg = _last_segment(data)
    good_size = seg.stat().st_size
    payload = b"x" * 100
    garbage = {"partial frame": struct.pack("<II", 5000, 0) + b"only a few bytes",
               "bad crc": struct.pack("<II", len(payload), zlib.crc32(payload) ^ 1) + payload,
               "zeros": b"\0" * 64}[tail]
    with open(seg, "ab") as f:
        f.write(garbage)
    server = ServerProcess(data)
    out = server.output()
    assert "torn tail" in out, out
    import urllib.request
    health = json.loads(urllib.request.urlopen(server.url + "/health").read())
    assert health["recovery"]["cutBytes"] == len(garbage)
    # new pushes after the recovery land right behind the last good record
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{server.url}/push/trip", data=orjson.dumps(trip(itin_id(10**8))),
                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        assert r.status == 200
    server.stop()
    assert seg.stat().st_size > good_size
    torn = list(seg.parent.glob(seg.name + ".torn-*"))
    assert len(torn) == 1 and torn[0].read_bytes() == garbage  # the cut bytes are kept, not destroyed
    check = json.loads(run_cli("check", "--json", data=data).stdout)
    assert check["ok"] is True
    assert any("torn tail" in w for w in check["warnings"])
    run_cli("compact", data=data)
    assert_all_once(data, acked + [("trip", itin_id(10**8))])


def test_a_failed_write_does_not_advance_the_log(tmp_path, monkeypatch):
    """A write error acknowledges nothing, the half-made batch is cut off, and the next batch
    takes the same offsets."""
    w = LogWriter(tmp_path, 0)
    w.append([(Kind.TRIP, 1, "t", "a", b"{}")])
    [(_, seg)] = list_segments(tmp_path / "log" / "p0")
    size = seg.stat().st_size
    real_fdatasync = os.fdatasync

    def failing_fdatasync(fd):
        raise OSError(5, "Input/output error")  # the frame was written, but is not durable
    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(OSError):
        w.append([(Kind.TRIP, 2, "t", "b", b"{}")])
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    assert w.next_offset == 1 and seg.stat().st_size == size
    w.append([(Kind.TRIP, 3, "t", "c", b"{}")])
    w.close()
    w2 = LogWriter(tmp_path, 0)
    assert w2.recovery is None and w2.next_offset == 2
    assert size < seg.stat().st_size
    assert [(r.offset, r.key) for r in LogReader(tmp_path, "p0").read(0)] == [(0, "a"), (1, "c")]
    w2.close()


def test_short_writes_and_batches_over_iov_max_keep_every_frame(tmp_path, monkeypatch):
    """The kernel may take part of a ``writev`` (or at most IOV_MAX buffers): the writer goes on
    from the exact byte where it stopped, and every record reads back with its CRC."""
    real_writev = os.writev

    def short_writev(fd, bufs):  # takes at most 1,000 bytes, often stopping inside a buffer
        taken, left = [], 1000
        for b in bufs:
            mv = memoryview(b)[:left]
            taken.append(mv)
            left -= len(mv)
            if not left:
                break
        return real_writev(fd, taken)
    items = [(Kind.TRIP, 1_700_000_000_000_000 + i, "acme", itin_id(i), b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 700)))
             for i in range(1500)]  # 3,000 buffers: more than IOV_MAX (1,024)
    w = LogWriter(tmp_path, 0)
    w.append(items[:700])
    monkeypatch.setattr(os, "writev", short_writev)
    w.append(items[700:])
    monkeypatch.undo()
    w.close()
    got = LogReader(tmp_path, "p0").read(0, max_records=10_000)
    assert [(r.offset, r.key, r.body) for r in got] == [(i, it[3], it[4]) for i, it in enumerate(items)]


def _seed_log(data: Path, n: int, start: int = 0) -> None:
    w = LogWriter(data, 0)
    items = []
    for i in range(start, start + n):
        items.append((Kind.TRIP, 1_700_000_000_000_000 + i, "acme", itin_id(i), orjson.dumps(trip(itin_id(i)))))
        if i % 4 == 0:
            items.append((Kind.CRASH, 1_700_000_000_000_000 + i, "acme", f"c{i}", orjson.dumps({"crashId": f"c{i}"})))
    w.append(items)
    w.close()


@pytest.mark.parametrize("failpoint", ["compactor.after_write", "compactor.before_commit",
                                       "compactor.before_links", "compactor.after_commit"])
def test_compactor_killed_mid_commit_leaves_a_consistent_lake(tmp_path, failpoint):
    data = tmp_path / "data"
    data.mkdir()
    _seed_log(data, 20)
    run_cli("compact", data=data)
    before = queries.connect(data).execute("SELECT count(*) FROM trips").fetchall()[0][0]
    assert before == 20
    # next batch: new trips, re-pushes of old ones (files rewritten) and a deletion
    _seed_log(data, 20, start=10)
    w = LogWriter(data, 0)
    w.append([(2, 1_800_000_000_000_000, "acme", f"{itin_id(3)}:TRIP_DELETION", orjson.dumps(deletion(itin_id(3))))])
    w.close()
    p = run_cli("compact", data=data, check=False, env={"PUSHLAKE_FAILPOINT": failpoint})
    assert p.returncode == -signal.SIGKILL
    con = queries.connect(data)
    n = con.execute("SELECT count(*), count(DISTINCT itin_id) FROM trips").fetchall()[0]
    assert n[0] == n[1]  # never doubled, whatever the crash point
    assert n[0] in (before, 29)
    assert con.execute("SELECT itin_id, count(*) c FROM trip_samples GROUP BY 1 HAVING c != 10").fetchall() == []
    check = json.loads(run_cli("check", "--json", data=data).stdout)
    assert check["ok"], check
    run_cli("compact", data=data)  # the next run finishes the work
    con = queries.connect(data)
    assert con.execute("SELECT count(*), count(DISTINCT itin_id) FROM trips").fetchall() == [(29, 29)]
    assert con.execute("SELECT count(*) FROM trips WHERE itin_id = ?", [itin_id(3)]).fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM crashes").fetchall() == [(8,)]
    check = json.loads(run_cli("check", "--json", data=data).stdout)
    assert check["ok"] and not [w for w in check["warnings"] if "orphan" in w or "hive tree" in w]
    # killed between its commit and its links, the compactor finished them at its next start:
    # a reader that knows nothing of pushlake sees the rows of the views
    plain = duckdb.sql(f"SELECT count(*), count(DISTINCT itin_id), count(*) FILTER (WHERE itin_id = '{itin_id(3)}') "
                       f"FROM read_parquet('{data}/lake/trips/**/*.parquet', hive_partitioning = true)").fetchall()
    assert plain == [(29, 29, 0)]


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 3 MiB filesystem (tmpfs) to fill up; needs root, as in CI here."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


async def test_full_disk_answers_503_and_keeps_every_acknowledged_push(tiny_disk, aiohttp_client):
    from ingest.app import build_app
    from lake.receiver import ReceiverLake
    from pushlake.config import Settings
    from pushlake.teams import Teams
    data = tiny_disk / "data"
    key = Teams(data).create("acme")["pushApiKey"]
    ballast = tiny_disk / "ballast"
    ballast.write_bytes(b"\0" * (1 << 20))
    client = await aiohttp_client(build_app(Settings(data_dir=data, min_free_bytes=0), lake=ReceiverLake(data)))
    body = (Path(__file__).parent / "fixtures" / "trip_33min.json").read_bytes()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    acked, refused = [], []
    for i in range(40):
        b = body.replace(b"9d9b9e60a9ee841fd67a6e92", itin_id(i).encode())
        r = await client.post("/push/trip", data=b, headers=headers)
        (acked if r.status == 200 else refused).append((i, r.status, r.headers.get("Retry-After")))
    assert refused and all(st == 503 and ra for _, st, ra in refused), refused
    assert len(acked) >= 3
    # space comes back: pushes are accepted again, behind the last acknowledged one
    ballast.unlink()
    r = await client.post("/push/trip", data=body, headers=headers)
    assert r.status == 200
    await client.close()
    w = LogWriter(data, 0)
    assert w.recovery is None  # no half-written frame was left behind
    w.close()
    from ingest.log import iter_all_records
    keys = [r.key for _, r in iter_all_records(data, "p0")]
    assert keys == [itin_id(i) for i, _, _ in acked] + ["9d9b9e60a9ee841fd67a6e92"]


def test_readers_stop_at_the_durable_mark_while_a_writer_holds_the_partition(tmp_path):
    """A record written but not yet fsynced must not be projected: an OS crash could take it
    back, and new records would then reuse offsets the compactor had already passed."""
    from ingest.log import DURABLE, DURABLE_FMT, LogReader
    w = LogWriter(tmp_path, 0)
    w.append([(Kind.TRIP, i, "t", f"k{i}", b"{}") for i in range(5)])
    # the window between write() and fdatasync() of a next batch: the mark still says 3
    with open(tmp_path / "log" / "p0" / DURABLE, "r+b") as f:
        f.write(DURABLE_FMT.pack(3))
    reader = LogReader(tmp_path, "p0")
    assert [r.offset for r in reader.read(0)] == [0, 1, 2]
    assert reader.read(3) == []
    w.append([(Kind.TRIP, 9, "t", "k9", b"{}")])  # fsynced: the mark moves to 6
    assert [r.offset for r in reader.read(3)] == [3, 4, 5]
    w.close()  # the writer publishes its final mark: everything is readable
    assert [r.offset for r in LogReader(tmp_path, "p0").read(0)] == [0, 1, 2, 3, 4, 5]

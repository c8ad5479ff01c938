"""Query limits that hold: time and memory (in a worker process, whatever DuckDB does), result
size, slots per reader, write timeouts, password checks; and no absolute server path shown."""
from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import orjson
import pytest

from queries.worker import WORKERS
from tests.test_reads import ADMIN_PW, basic, bearer, lake, q  # noqa: F401 - the fixture


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def test_memory_and_time_limits_hold_and_the_next_query_works(lake):  # noqa: F811
    client, keys = await lake(query_timeout_s=2)
    h = bearer(keys["acme"]["adminApiKey"])
    assert (await q(client, "SELECT 1 AS x", h)).status == 200
    before = rss_mb(os.getpid())
    t = time.monotonic()
    r = await q(client, "SELECT len(range(200000000)) AS n", h)
    body = await r.json()
    assert r.status == 400 and body["error"] == "out_of_memory", body
    assert time.monotonic() - t < 10
    # planning a 20,000-branch UNION ALL cannot be interrupted: the worker is killed at the deadline
    t = time.monotonic()
    r = await q(client, " UNION ALL ".join(f"SELECT {i} AS x" for i in range(20_000)), h)
    body = await r.json()
    assert r.status == 400 and body["error"] == "query_timeout", body
    assert time.monotonic() - t < 6
    assert rss_mb(os.getpid()) - before < 200  # nothing of it ran in this process
    r = await q(client, "SELECT count(*) AS n FROM trips", h)
    assert (await r.json())["rows"] == [{"n": 6}]


@pytest.mark.parametrize("accept", ["application/json", "text/csv", "application/vnd.apache.arrow.stream",
                                    "application/vnd.apache.parquet"])
async def test_a_large_result_is_cut_at_the_byte_limit(lake, accept):  # noqa: F811
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    client, keys = await lake(query_max_bytes=200_000)
    r = await q(client, "SELECT range(1000) AS l FROM range(100000)", bearer(keys["acme"]["adminApiKey"]), accept=accept)
    raw = await r.read()
    assert r.status == 200 and len(raw) <= 200_000 and r.headers["X-Pushlake-Truncated"] == "true"
    n = int(r.headers["X-Pushlake-Rows"])
    assert 0 < n < 100
    if accept == "application/json":
        doc = orjson.loads(raw)
        assert doc["truncated"] is True and doc["rowCount"] == n == len(doc["rows"])
        assert doc["rows"][0]["l"] == list(range(1000))
    elif accept == "text/csv":
        assert len(raw.decode().splitlines()) == n + 1
    elif accept.endswith("arrow.stream"):
        assert pa.ipc.open_stream(raw).read_all().num_rows == n
    else:
        assert pq.read_table(io.BytesIO(raw)).num_rows == n


async def test_one_reader_cannot_take_every_slot(lake):  # noqa: F811
    client, keys = await lake(query_timeout_s=3, query_per_team=2, query_workers=4)
    acme, globex = bearer(keys["acme"]["adminApiKey"]), bearer(keys["globex"]["adminApiKey"])
    slow = "SELECT count(*) FROM range(100000000000) a, range(1000) b"
    running = [asyncio.ensure_future(q(client, slow, acme)) for _ in range(2)]
    await asyncio.sleep(0.3)
    r = await q(client, "SELECT 1 AS x", acme)
    assert r.status == 429 and (await r.json())["error"] == "too_many_requests" and int(r.headers["Retry-After"]) >= 1
    r = await client.get("/v1/export/trips", headers=acme)
    assert r.status == 429
    t = time.monotonic()
    r = await q(client, "SELECT count(*) AS n FROM trips", globex)
    assert (await r.json())["rows"] == [{"n": 3}] and time.monotonic() - t < 2
    for f in running:
        assert (await f).status == 400
    assert (await q(client, "SELECT 1 AS x", acme)).status == 200


async def test_a_client_that_does_not_read_is_cut_off_and_frees_its_slot(lake):  # noqa: F811
    client, keys = await lake(query_per_team=1, query_write_timeout_s=1, query_max_bytes=64 << 20)
    h = bearer(keys["acme"]["adminApiKey"])
    url = str(client.make_url("/v1/query"))
    async with aiohttp.ClientSession() as s:
        # ~20 MB of JSON, never read past the headers
        r = await s.post(url, data=orjson.dumps({"sql": "SELECT range(1000) AS l FROM range(4000)"}), headers=h)
        assert r.status == 200
        assert (await q(client, "SELECT 1 AS x", h)).status == 429  # its slot is held...
        await asyncio.sleep(2.5)
        r2 = await q(client, "SELECT 1 AS x", h)  # ...until the write timeout cuts the reader off
        assert r2.status == 200
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            await r.read()


async def _stalled_get(client, path: str, headers: dict) -> tuple:
    """A GET whose client reads the status line and then nothing more, through a small receive
    buffer (so the server's writes block soon)."""
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (client.host, client.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    return status, reader, writer


async def test_unread_exports_free_their_slots(lake, data):  # noqa: F811
    from ingest.log import LogWriter
    from ingest.record import Kind
    from tests.conftest import compact
    from tests.helpers import itin_id, trip
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1_760_000_000_000_000 + i, "acme", itin_id(1000 + i),
               orjson.dumps(trip(itin_id(1000 + i)))) for i in range(800)])
    w.close()
    compact(data)
    client, keys = await lake(query_per_team=2, query_write_timeout_s=1)
    h = bearer(keys["acme"]["adminApiKey"])
    held = [await _stalled_get(client, "/v1/export/trip_samples?format=jsonl", h) for _ in range(2)]
    assert all(b" 200 " in status for status, _, _ in held)
    r = await q(client, "SELECT 1 AS x", h)
    assert r.status == 429  # both of acme's slots are held by the stalled downloads
    r = await asyncio.wait_for(q(client, "SELECT count(*) AS n FROM trips", bearer(keys["globex"]["adminApiKey"])), 5)
    assert (await r.json())["rows"] == [{"n": 3}]  # another team is not held up
    await asyncio.sleep(2)
    r = await q(client, "SELECT 1 AS x", h)
    assert r.status == 200  # the stalled downloads were cut off
    for _, reader, writer in held:
        rest = b""
        while chunk := await reader.read(1 << 20):  # what the server sent before cutting off
            rest += chunk
        assert not rest.endswith(b"0\r\n\r\n")  # the chunked body never ended: cut, not complete
        writer.close()


async def test_failed_passwords_are_slowed_down_without_scrypt(lake):  # noqa: F811
    client, keys = await lake(password_max_failures=5)
    wrong = basic("root@example.com", "wrong-password-1A!")
    for _ in range(5):
        assert (await q(client, "SELECT 1", wrong)).status == 401
    t = time.monotonic()
    r = await q(client, "SELECT 1", wrong)
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1 and time.monotonic() - t < 0.05
    r = await q(client, "SELECT 1", basic("root@example.com", ADMIN_PW))  # locked too, for now
    assert r.status == 429
    # other users are not affected, nor are team keys
    assert (await q(client, "SELECT 1", basic("ghost@example.com", "nope"))).status == 401
    assert (await q(client, "SELECT 1 AS x", bearer(keys["acme"]["adminApiKey"]))).status == 200
    await asyncio.sleep(1.1)
    r = await q(client, "SELECT 1 AS x", basic("root@example.com", ADMIN_PW))
    assert r.status == 200  # a success resets the count
    assert (await q(client, "SELECT 1", wrong)).status == 401


async def test_many_password_checks_do_not_hold_up_queries(lake):  # noqa: F811
    client, keys = await lake(password_checks=4, password_max_failures=1000)
    wrong = [basic(f"user{i}@example.com", "wrong") for i in range(40)]
    attempts = [asyncio.ensure_future(q(client, "SELECT 1", w)) for w in wrong]
    await asyncio.sleep(0.05)
    t = time.monotonic()
    r = await q(client, "SELECT count(*) AS n FROM trips", bearer(keys["acme"]["adminApiKey"]))
    assert (await r.json())["rows"] == [{"n": 6}] and time.monotonic() - t < 2
    statuses = sorted({(await a).status for a in attempts})
    assert statuses == [401, 503]
    refused = [a.result() for a in attempts if a.result().status == 503]
    assert refused[0].headers["Retry-After"] == "1"


async def test_team_sql_does_not_see_server_paths(lake, data):  # noqa: F811
    client, keys = await lake()
    for who in (bearer(keys["acme"]["adminApiKey"]), basic("root@example.com", ADMIN_PW)):
        for sql in ("SELECT * FROM duckdb_variables()", "SELECT getvariable('pl_trips') AS v",
                    "SELECT * FROM duckdb_settings()",
                    "SELECT * FROM read_parquet(getvariable('pl_trips')) LIMIT 1"):
            r = await q(client, sql, who)
            text = await r.text()
            assert r.status == 200, (sql, text)
            if "settings" in sql:  # DuckDB resolves allowed_directories itself: the one place left
                rows = (await r.json())["rows"]
                text = orjson.dumps([x for x in rows if x.get("name") != "allowed_directories"]).decode()
            assert str(data) not in text and str(data.resolve()) not in text, sql
    r = await q(client, "SELECT getvariable('pl_trips') AS v", bearer(keys["acme"]["adminApiKey"]))
    assert (await r.json())["rows"][0]["v"][0].startswith("files/trips/team=acme/")


async def test_worker_processes_stay_few_and_die_with_the_zygote(lake):  # noqa: F811
    client, keys = await lake()
    h = bearer(keys["acme"]["adminApiKey"])
    await asyncio.gather(*[q(client, "SELECT 1 AS x", h) for _ in range(6)])
    await asyncio.sleep(0.7)  # finished children are reaped
    assert len(WORKERS.pids()) == 1


def test_query_processes_die_with_the_server(data):
    """SIGKILL of `pushlake serve` while a query runs leaves no zygote and no query process."""
    import threading
    import urllib.request

    from pushlake.teams import Teams
    from tests.helpers import ServerProcess
    t = Teams(data)
    key = t.create("acme")["adminApiKey"]
    t.close()
    srv = ServerProcess(data, "--no-compactor")
    try:
        def slow():
            req = urllib.request.Request(srv.url + "/v1/query", method="POST",
                                         data=b'{"sql": "SELECT count(*) FROM range(100000000000) a, range(1000) b"}',
                                         headers={"Authorization": f"Bearer {key}"})
            try:
                urllib.request.urlopen(req, timeout=30).read()
            except OSError:
                pass
        th = threading.Thread(target=slow, daemon=True)
        th.start()
        deadline = time.monotonic() + 10
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:  # the zygote and the query's process
            time.sleep(0.1)
            workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_worker(int(p), srv.proc.pid)]
        assert len(workers) >= 2, workers
        deadline = time.monotonic() + 5  # the query's process is the one the OOM killer would take first
        while time.monotonic() < deadline and "1000" not in [_oom(p) for p in workers]:
            time.sleep(0.05)
        assert sorted(_oom(p) for p in workers) == ["0", "1000"]
        srv.kill()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        assert not [p for p in workers if _alive(p)]
    finally:
        srv.stop()


def _is_worker(pid: int, server: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"queries.worker" not in f.read():
                return False
        with open(f"/proc/{pid}/status") as f:
            ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
        return ppid == server or _is_worker(ppid, server)
    except (OSError, StopIteration):
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except OSError:
        return False


async def test_exports_run_in_query_processes_and_leave_no_spill_directory(lake):  # noqa: F811
    import glob
    import tempfile
    client, keys = await lake()
    r = await client.get("/v1/export/trip_samples?format=csv", headers=bearer(keys["acme"]["adminApiKey"]))
    assert r.status == 200 and int(r.headers["X-Pushlake-Rows"]) == len((await r.text()).splitlines()) - 1
    await asyncio.sleep(1.2)  # the zygote reaps its children (and removes their directories) every 0.5 s
    left = [d for d in glob.glob(os.path.join(tempfile.gettempdir(), "pushlake-spill-*", "export-*"))
            if not os.path.exists(f"/proc/{d.rsplit('-', 1)[1]}")]
    assert left == []
    roots = glob.glob(os.path.join(tempfile.gettempdir(), "pushlake-spill-*"))
    assert roots and all(os.stat(d).st_mode & 0o077 == 0 for d in roots)  # the zygote's own, owner-only


def _oom(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            return f.read().strip()
    except OSError:
        return ""


async def test_a_query_process_killed_from_outside_is_a_clear_error(lake):  # noqa: F811
    """What the kernel's OOM killer would do: SIGKILL of the query's process."""
    import signal
    client, keys = await lake(query_timeout_s=20)
    h = bearer(keys["acme"]["adminApiKey"])
    assert (await q(client, "SELECT 1 AS x", h)).status == 200
    zygote = WORKERS.pids()[0]
    slow = asyncio.ensure_future(q(client, "SELECT count(*) FROM range(100000000000) a, range(1000) b", h))
    deadline = time.monotonic() + 5
    children: list[int] = []
    while time.monotonic() < deadline and not children:
        await asyncio.sleep(0.05)
        children = [p for p in WORKERS.pids() if p != zygote and _alive(p)]
    assert children
    await asyncio.sleep(0.3)
    os.kill(children[0], signal.SIGKILL)
    r = await asyncio.wait_for(slow, 5)
    body = await r.json()
    assert r.status == 400 and body["error"] == "out_of_memory" and "died" in body["message"]
    assert (await q(client, "SELECT count(*) AS n FROM trips", h)).status == 200


async def test_a_dead_zygote_is_replaced(lake):  # noqa: F811
    client, keys = await lake()
    h = bearer(keys["acme"]["adminApiKey"])
    assert (await q(client, "SELECT 1 AS x", h)).status == 200
    old = WORKERS.pids()[0]
    os.kill(old, 9)
    await asyncio.sleep(0.1)
    r = await q(client, "SELECT count(*) AS n FROM trips", h)
    assert (await r.json())["rows"] == [{"n": 6}]
    assert WORKERS.pids()[0] != old

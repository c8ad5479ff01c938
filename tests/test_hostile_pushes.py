"""One tenant's pushes never stop, poison or starve the lake for the others (issue 9, part 1).

Each body here was once answered 200 and then made every compaction step fail, for every team,
forever. Now a body is refused at the door when it is not JSON (RFC 8259: UTF-8 text), projected
with its numbers as pushed, or FAILED with a reason; and a record that makes its step fail for
any other reason is isolated by bisecting the batch, so the compactor always advances.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

import queries
from lake import status
from lake.catalog import Catalog
from lake.compactor import Compactor
from tests.conftest import compact
from tests.helpers import ServerProcess, create_team, deletion, fixture, fixture_bytes, itin_id, run_cli, trip

BIG = "123456789012345678901234567890"

# bodies that stopped compaction for everyone, and their neighbours: (push path, raw body)
HOSTILE = {
    "trip-infinity": ("trip", b'{"itinId":"h1","a":1e999}'),
    "trip-route-int-overflow": ("trip", b'{"itinId":"h2","route":{"latitude":[' + BIG.encode() + b'],"longitude":[1]}}'),
    "trip-route-infinity": ("trip", b'{"itinId":"h3","route":{"latitude":[1e999],"longitude":[1]}}'),
    "trip-route-extra-big-int": ("trip", b'{"itinId":"h4","route":{"latitude":[1],"stoppingStateRoute":[' + BIG.encode() + b']}}'),
    "trip-i64-column-overflow": ("trip", b'{"itinId":"h5","safety":{"nbAdh":' + BIG.encode() + b'}}'),
    "trip-i64-column-1e300": ("trip", b'{"itinId":"h6","safety":{"nbAdh":1e300}}'),
    "trip-i64-column-u64": ("trip", b'{"itinId":"h7","safety":{"nbAdh":18446744073709551615}}'),
    "trip-f64-column-infinity": ("trip", b'{"itinId":"h8","itineraryStatistics":{"distance":1e999}}'),
    "trip-f64-column-infinity-string": ("trip", b'{"itinId":"h9","itineraryStatistics":{"distance":"1e999"}}'),
    "trip-date-year-1-west": ("trip", b'{"itinId":"h10","itineraryData":{"startDate":"0001-01-01T00:00:00-05:00"}}'),
    "trip-date-year-1-east": ("trip", b'{"itinId":"h11","itineraryData":{"startDate":"0001-01-01T00:00:00+14:00"}}'),
    "trip-event-infinity": ("trip", b'{"itinId":"h12","safetyEvents":[{"latitude":1e999,"x":1e999}]}'),
    "trip-nested-900": ("trip", b'{"itinId":"h13","a":' + b"[" * 900 + b"]" * 900 + b"}"),
    "crash-infinity": ("crash", b'{"crashId":"c1","a":1e999,"probability":1e999}'),
    "crash-big-int": ("crash", b'{"crashId":"c2","a":' + BIG.encode() + b"}"),
    "diagnosis-infinity": ("diagnosis", b'{"userId":"u1","a":1e999,"events":[{"x":1e999}]}'),
    "deletion-infinity": ("trip/event", b'{"itinId":"h14","event":"TRIP_DELETION","date":1e999,"x":1e999}'),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_push_never_stops_compaction_for_another_team(make_pusher, acme, globex, data, name):
    path, raw = HOSTILE[name]
    bad, good = await make_pusher(acme), await make_pusher(globex)
    status_, body = await bad.push(path, None, raw=raw)
    assert status_ == 200, body
    assert (await good.push("trip", trip(itin_id(1))))[0] == 200
    with Compactor(data, workers=0) as c:
        c.drain()
        assert c.catalog.positions() == {"p0": 2}, "the compactor went past both records"
        failed = c.catalog.failed_items()
    con = queries.connect(data, team="globex")
    assert con.execute("SELECT itin_id FROM trips").fetchall() == [(itin_id(1),)]
    for f in failed:  # what could not be projected says why
        assert f[2] == "acme" and f[7], f


@pytest.mark.parametrize("kind", ["trip", "trip/event", "crash", "diagnosis"])
@pytest.mark.parametrize("what,raw", [
    ("latin-1 byte", b'{"itinId":"x","event":"TRIP_DELETION","crashId":"x","userId":"x","c":"caf\xe9"}'),
    ("overlong utf-8", b'{"itinId":"x","event":"TRIP_DELETION","crashId":"x","userId":"x","c":"\xc0\xaf"}'),
    ("utf-16 surrogate as utf-8", b'{"itinId":"x","event":"TRIP_DELETION","crashId":"x","userId":"x","c":"\xed\xa0\x80"}'),
    ("lone surrogate escape", b'{"itinId":"x","event":"TRIP_DELETION","crashId":"x","userId":"x","c":"\\ud800"}'),
    ("100k levels", b'{"itinId":"x","event":"TRIP_DELETION","crashId":"x","userId":"x","c":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("10k levels of objects", b'{"itinId":"x","event":"TRIP_DELETION","crashId":"x","userId":"x","c":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}"),
])
async def test_what_is_not_json_text_is_a_json_400_and_stores_nothing(pusher, data, kind, what, raw):
    status_, body = await pusher.push(kind, None, raw=raw)
    assert status_ == 400 and body["error"] == "invalid_json", (what, body)
    assert not any(p.stat().st_size for p in (data / "log").rglob("*.log"))


async def test_numbers_keep_their_value_in_the_extra_columns(pusher, data):
    raw_numbers = {"big": BIG, "negbig": "-9223372036854775809", "u64": "18446744073709551615",
                   "inf": "1e999", "tiny": "1e-999", "precise": "0.1000000000000000055511151231257827",
                   "plain": "1.5", "int": "42", "long_hex_like": "12345678901234567.5e3"}
    obj = "{" + ",".join(f'"{k}":{v}' for k, v in raw_numbers.items()) + "}"
    t = json.dumps(trip(itin_id(2))).encode()[:-1] + b',"custom":' + obj.encode() + b"}"
    assert (await pusher.push("trip", None, raw=t))[0] == 200
    assert (await pusher.push("crash", None, raw=b'{"crashId":"c9","custom":' + obj.encode() + b"}"))[0] == 200
    assert (await pusher.push("diagnosis", None, raw=b'{"userId":"u9","events":[' + obj.encode() + b'],"custom":'
                              + obj.encode() + b"}"))[0] == 200
    stats, failed = compact(data)
    assert stats.failed == 0 and not failed, failed
    con = queries.connect(data)
    for sql in ("SELECT extra FROM trips", "SELECT extra FROM crashes", "SELECT extra FROM diagnoses",
                "SELECT events FROM diagnoses"):
        text = con.execute(sql).fetchone()[0]
        for k, v in raw_numbers.items():  # the number's text, as pushed, not its double
            assert f'"{k}":{v}' in text, (sql, k, text)


async def test_out_of_range_values_in_typed_columns_fail_their_push_with_a_reason(pusher, data):
    await pusher.push("trip", None, raw=HOSTILE["trip-i64-column-overflow"][1])
    await pusher.push("trip", None, raw=HOSTILE["trip-f64-column-infinity"][1])
    await pusher.push("trip", None, raw=HOSTILE["trip-route-infinity"][1])
    body = trip(itin_id(3))
    body["safety"]["nbAdh"] = 2 ** 53 + 1  # an integer a double would round
    await pusher.push("trip", body)
    _, failed = compact(data)
    reasons = {f[3]: f[7] for f in failed}
    assert "safety.nbAdh" in reasons["h5"] and "64-bit integer" in reasons["h5"]
    assert "itineraryStatistics.distance" in reasons["h8"] and "64-bit float" in reasons["h8"]
    assert "route.latitude" in reasons["h3"]
    con = queries.connect(data)
    assert con.execute("SELECT nb_adh FROM trips").fetchall() == [(2 ** 53 + 1,)]


def _fail_on(monkeypatch, itin: str) -> None:
    """Make writing any file that holds ``itin`` fail as a bug would (not as the disk would)."""
    import lake.files as lf
    real = lf.write_file

    def write(data_dir, tbl, team, date, table):
        if "itin_id" in table.column_names and itin in table.column("itin_id").to_pylist():
            raise ValueError(f"cannot write {itin}")
        return real(data_dir, tbl, team, date, table)
    monkeypatch.setattr(lf, "write_file", write)


async def test_a_record_that_makes_its_step_fail_is_isolated_and_failed(make_pusher, acme, globex, data, monkeypatch):
    a, g = await make_pusher(acme), await make_pusher(globex)
    for n in range(40):
        await a.push("trip", trip(itin_id(n)))
        if n == 25:
            await a.push("trip", trip("poison"))
            await g.push("trip", trip(itin_id(1000)))
    _fail_on(monkeypatch, "poison")
    with Compactor(data, workers=0) as c:
        c.drain()
        assert c.catalog.positions() == {"p0": 42}
        failed = c.catalog.failed_items()
        assert not c.isolation.active, "full batches again once past the failed batch"
    assert [(f[3], f[7]) for f in failed] == [("poison", "compaction error: ValueError: cannot write poison")]
    con = queries.connect(data)
    assert con.execute("SELECT count(*) FROM trips WHERE team_id = 'acme'").fetchone() == (40,)
    assert con.execute("SELECT itin_id FROM trips WHERE team_id = 'globex'").fetchall() == [(itin_id(1000),)]
    assert con.execute("SELECT count(*) FROM trip_samples").fetchone() == (41 * 10,)
    report = Catalog(data).report(1, "2000-01-01", "2100-01-01")
    assert sum(r["received"] for r in report) == 42 and sum(r["failed"] for r in report) == 1
    # once the cause is fixed, the FAILED item is retried like any other
    monkeypatch.undo()
    run_cli("failed", "retry", data=data)
    assert queries.connect(data).execute("SELECT count(*) FROM trips WHERE itin_id = 'poison'").fetchone() == (1,)


@pytest.mark.parametrize("poison_in", ["p0", "p1"])
def test_a_failing_record_is_isolated_among_several_busy_partitions(data, monkeypatch, poison_in):
    """Partitions of several receivers (``--workers``): a batch of one record is one record, and
    the partitions past the failed batch wait (a busy one cannot starve the search)."""
    import orjson
    from ingest.log import LogWriter
    from ingest.record import Kind
    ts = 1_737_400_000_000_000
    for p in (0, 1):
        w = LogWriter(data, p)
        for n in range(12):
            itin = "poison" if (f"p{p}", n) == (poison_in, 7) else itin_id(100 * p + n)
            w.append([(Kind.TRIP, ts + 1000 * n + p, "acme", itin, orjson.dumps(trip(itin)))])
        w.close()
    _fail_on(monkeypatch, "poison")
    steps = 0
    with Compactor(data, workers=0) as c:
        while True:
            steps += 1
            assert steps < 60, "isolation does not converge"
            try:
                if not c.step().records:
                    break
            except Exception:  # noqa: BLE001 - Isolating: the next, smaller step
                continue
        assert c.catalog.positions() == {"p0": 12, "p1": 12} and not c.isolation.active
        assert [(f.key, f.part) for f in c.catalog.failed_items()] == [("poison", poison_in)]
    assert queries.connect(data).execute("SELECT count(*) FROM trips").fetchone() == (23,)


async def test_a_batch_that_fails_while_it_is_prepared_is_isolated_too(pusher, data, monkeypatch):
    from lake.batches import BatchReader
    for n in range(5):
        await pusher.push("trip", trip(itin_id(n)))
    await pusher.push("trip", trip("poison"))
    real = BatchReader.finish

    def finish(b):
        if any(r.key == "poison" for _, r in b.records):
            raise ValueError("cannot prepare poison")
        return real(b)
    monkeypatch.setattr(BatchReader, "finish", staticmethod(finish))
    with Compactor(data, workers=0) as c:
        c.drain()
        assert c.catalog.positions() == {"p0": 6}
        assert [(f.key, f.reason) for f in c.catalog.failed_items()] == [
            ("poison", "compaction error: ValueError: cannot prepare poison")]
    assert queries.connect(data).execute("SELECT count(*) FROM trips").fetchone() == (5,)


async def test_a_record_that_fails_even_as_failed_is_quarantined(pusher, data, monkeypatch):
    for n in range(6):
        await pusher.push("trip", trip(itin_id(n)))
    await pusher.push("trip", trip("poison"))
    await pusher.push("trip/event", deletion(itin_id(0)))
    real = Catalog.commit

    def commit(self, c):
        if c.operation != "quarantine" and any(f[2] == "poison" for f in c.failed):
            raise KeyError("the catalog cannot take this FAILED item")
        return real(self, c)
    monkeypatch.setattr(Catalog, "commit", commit)
    _fail_on(monkeypatch, "poison")
    with Compactor(data, workers=0) as c:
        c.drain()
        assert c.catalog.positions() == {"p0": 8}
        failed = c.catalog.failed_items()
    assert [f[3] for f in failed] == ["poison"] and "KeyError" in failed[0][7]
    con = queries.connect(data)
    assert sorted(r[0] for r in con.execute("SELECT itin_id FROM trips").fetchall()) == [itin_id(n) for n in range(1, 6)]


def test_status_problems():
    now = 10_000.0
    ok = status.Status(started_at=now - 500, caught_up_at=now - 1, positions={"p0": 10})
    assert status.problems(ok, {"p0": 10}, now) == ([], {"p0": 0})
    assert status.problems(ok, {"p0": 15}, now)[0] == []  # behind for a second: compacting
    stalled = status.Status(started_at=now - 500, caught_up_at=now - 120, progress_at=now - 90, positions={"p0": 10})
    probs, lag = status.problems(stalled, {"p0": 15, "p1": 3}, now)
    assert lag == {"p0": 5, "p1": 3} and len(probs) == 1 and "not advancing" in probs[0] and "90 s" in probs[0]
    failing = status.Status(started_at=now - 500, caught_up_at=now - 5, failing_since=now - 5, failures=3,
                            last_error="OSError: disk", positions={"p0": 10})
    probs, _ = status.problems(failing, {"p0": 10}, now)
    assert len(probs) == 1 and "failing" in probs[0] and "OSError: disk" in probs[0]
    once = status.Status(started_at=now - 500, caught_up_at=now - 1, failing_since=now - 1, failures=1,
                         last_error="x", positions={"p0": 10})
    assert status.problems(once, {"p0": 10}, now)[0] == []  # one failed step is not yet a failing compactor
    assert status.problems(None, {"p0": 10}, now) == ([], {"p0": 10})


def _health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_health_and_check_report_a_failing_compactor(tmp_path):
    data = tmp_path / "data"
    key = create_team(data, "acme")
    server = ServerProcess(data, env={"PUSHLAKE_FAILPOINT": "compactor.before_commit=eio"})
    try:
        req = urllib.request.Request(server.url + "/push/trip", data=json.dumps(trip(itin_id(1))).encode(),
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=10).status == 200
        deadline = time.monotonic() + 40
        while True:
            code, h = _health(server.url)
            if code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert code == 503 and h["status"] == "degraded", h
        assert any("compactor failing" in r and "injected I/O error" in r for r in h["reasons"]), h
        assert h["compactor"]["lagRecords"] == 1
        p = run_cli("check", data=data, check=False)
        assert p.returncode == 1 and "compactor failing" in p.stdout, p.stdout
    finally:
        server.stop()
    p = run_cli("check", data=data, check=False)  # stopped: the backlog and the failing last run remain
    assert p.returncode == 1 and "ended failing" in p.stdout, p.stdout


def test_health_and_check_are_ok_for_a_healthy_service(tmp_path):
    data = tmp_path / "data"
    key = create_team(data, "acme")
    server = ServerProcess(data)
    try:
        req = urllib.request.Request(server.url + "/push/trip", data=json.dumps(fixture("trip_small.json")).encode(),
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=10).status == 200
        deadline = time.monotonic() + 30
        while _health(server.url)[1]["compactor"]["lagRecords"] and time.monotonic() < deadline:
            time.sleep(0.2)
        code, h = _health(server.url)
        assert (code, h["status"], h["reasons"], h["compactor"]["lagRecords"]) == (200, "ok", [], 0), h
        p = run_cli("check", data=data, check=False)
        assert p.returncode == 0, p.stdout
    finally:
        server.stop()
    assert fixture_bytes("trip_small.json")

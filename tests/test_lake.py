"""Projection into the lake: typed values, idempotency, quarantine of what cannot be projected."""
from __future__ import annotations

import datetime as dt
import json

import orjson
import pytest

import queries
from lake.compactor import Compactor
from lake.schema import TRIP_FIELDS
from tests.conftest import compact
from tests.helpers import fixture, fixture_bytes, itin_id, trip

UTC = dt.timezone.utc


async def push_fixtures(p):
    for kind, name in [("trip", "trip_small.json"), ("trip", "trip_33min.json"), ("crash", "crash.json"),
                       ("diagnosis", "diagnosis.json"), ("diagnosis", "diagnosis_empty.json")]:
        status, body = await p.push(kind, None, raw=fixture_bytes(name))
        assert status == 200, body


def one(con, sql, *params):
    rows = con.execute(sql, list(params) or None).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


async def test_every_fixture_lands_in_its_view_with_typed_values(pusher, data):
    await push_fixtures(pusher)
    stats, _ = compact(data)
    assert (stats.stored, stats.failed) == (5, 0)
    con = queries.connect(data)
    t33 = fixture("trip_33min.json")
    row = one(con, "SELECT itin_id, team_id, user_id, vehicle_id, start_date, end_date, distance_m, duration_s, "
                   "eco_driving_score, safety_score, distraction_score, speeding_score, subdisp_nb, day, "
                   "n_samples, date FROM trips WHERE itin_id = ?", t33["itinId"])
    st = t33["itineraryStatistics"]
    assert row[:4] == (t33["itinId"], "acme", t33["userId"], t33["vehicleId"])
    assert row[4] == dt.datetime.fromisoformat(t33["itineraryData"]["startDate"]).astimezone(UTC)
    assert row[5] == dt.datetime.fromisoformat(t33["itineraryData"]["endDate"]).astimezone(UTC)
    assert row[6:8] == (st["distance"], st["tripDuration"])
    assert row[8:12] == (t33["ecoDriving"]["score"], t33["safety"]["safetyScore"],
                         t33["driverDistraction"]["score"], t33["speedingStatistics"]["score"])
    assert row[12] == st["subdispNb"] and row[13] is st["day"]
    assert row[14] == len(t33["route"]["gpsDate"])
    assert row[15] == row[4].date()  # trips are dated by their start
    # samples: one row per raw sample, in order
    r = t33["route"]
    samples = con.execute("SELECT seq, ts, latitude, longitude, speed_kmh FROM trip_samples WHERE itin_id = ? "
                          "ORDER BY seq", [t33["itinId"]]).fetchall()
    assert len(samples) == len(r["gpsDate"])
    for i in (0, 1, len(samples) - 1):
        seq, ts, lat, lon, speed = samples[i]
        assert seq == i
        assert ts == dt.datetime.fromtimestamp(r["gpsDate"][i], UTC)
        assert (lat, lon, speed) == (r["latitude"][i], r["longitude"][i], r["gpsVelocity"][i])
    # events: safety, speeding and call events of the trip
    n_events = sum(len(t33.get(k) or []) for k in ("safetyEvents", "speedingEvents", "callEvents"))
    assert one(con, "SELECT count(*) FROM trip_events WHERE itin_id = ?", t33["itinId"])[0] == n_events
    ev = t33["safetyEvents"][0]
    assert one(con, "SELECT time_s, latitude, level, value FROM trip_events WHERE itin_id = ? AND "
                    "event_type = 'safety' AND seq = 0", t33["itinId"]) == (ev["time"], ev["latitude"], ev["level"],
                                                                            ev["value"])
    crash = fixture("crash.json")
    assert one(con, "SELECT crash_id, user_id, crash_date, probability, status, latitude, velocity_kmh, date, "
                    "local_trip_id FROM crashes") == (
        crash["crashId"], crash["userId"], dt.datetime.fromisoformat(crash["parameters"]["date"]).astimezone(UTC),
        crash["probability"], crash["status"], crash["latitude"], crash["velocity"],
        dt.date.fromisoformat(crash["parameters"]["date"][:10]), crash["parameters"]["localTripId"])
    diags = con.execute("SELECT user_id, n_events, phone_model, events FROM diagnoses ORDER BY user_id").fetchall()
    d1, d0 = fixture("diagnosis.json"), fixture("diagnosis_empty.json")
    assert diags == sorted([(d1["userId"], 1, d1["smartphoneData"]["phoneModel"], orjson.dumps(d1["events"]).decode()),
                            (d0["userId"], 0, d0["smartphoneData"]["phoneModel"], "[]")])
    # every table has team_id and received_at
    for t in ("trips", "trip_samples", "trip_events", "crashes", "diagnoses", "trip_deletions"):
        cols = [c[0] for c in con.execute(f"DESCRIBE {t}").fetchall()]
        assert "team_id" in cols and "received_at" in cols


def _leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(obj, list) and obj and not all(isinstance(x, (int, float)) for x in obj):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


async def test_no_pushed_field_is_lost(pusher, data):
    """Every leaf of the body is either in a typed column or in the extra JSON."""
    body = fixture("trip_small.json")
    body["brandNewBlock"] = {"answer": 42, "nested": {"deep": [1, "two"]}}
    body["route"]["stoppingStateRoute"] = [0, 1]
    await pusher.push("trip", body)
    compact(data)
    con = queries.connect(data)
    extra = json.loads(one(con, "SELECT extra FROM trips")[0])
    assert extra["brandNewBlock"] == {"answer": 42, "nested": {"deep": [1, "two"]}}
    assert extra["route"] == {"stoppingStateRoute": [0, 1]}
    assert extra["metaData"] == body["metaData"]
    assert extra["comments"] == body["comments"]
    assert extra["tireWear"] == body["tireWear"]
    mapped_blocks = ("ecoDriving", "safety", "pollutants", "itineraryStatistics")
    for blk in mapped_blocks:
        assert blk not in extra  # fully mapped to columns
    cur = con.execute("SELECT * FROM trips")
    names = [d[0] for d in cur.description]
    row = dict(zip(names, cur.fetchall()[0]))
    by_path = {".".join(path): (col, typ) for col, path, typ in TRIP_FIELDS}
    in_extra = dict(_leaves(extra))
    checked = 0
    for path, value in _leaves(body):
        if path in in_extra:
            assert in_extra[path] == value
        elif path.startswith(("route.", "safetyEvents", "speedingEvents", "callEvents")) or path == "itinId":
            continue  # trip_samples / trip_events / the key column
        elif path == "endDate":
            assert row["end_date"] == dt.datetime.fromisoformat(value)
        else:
            assert path in by_path, f"{path} is neither in a column nor in extra"
            col, typ = by_path[path]
            expected = dt.datetime.fromisoformat(value) if typ == "ts" else value
            assert row[col] == expected, (path, col)
            checked += 1
    assert checked > 50


async def test_repushed_trip_keeps_one_row_latest_wins(pusher, data):
    await pusher.push("trip", trip(itin_id(1), user="first"))
    compact(data)
    await pusher.push("trip", trip(itin_id(1), user="second"))
    await pusher.push("trip", trip(itin_id(2), user="other"))
    compact(data)
    # and a batch with several pushes of the same trip
    for u in ("third", "fourth"):
        await pusher.push("trip", trip(itin_id(1), user=u))
    compact(data)
    con = queries.connect(data)
    assert con.execute("SELECT itin_id, user_id FROM trips ORDER BY 1").fetchall() == [
        (itin_id(1), "fourth"), (itin_id(2), "other")]
    assert con.execute("SELECT itin_id, count(*) FROM trip_samples GROUP BY 1 ORDER BY 1").fetchall() == [
        (itin_id(1), 10), (itin_id(2), 10)]
    n_ev = len(fixture("trip_small.json")["safetyEvents"]) + len(fixture("trip_small.json")["speedingEvents"])
    assert con.execute("SELECT count(*) FROM trip_events WHERE itin_id = ?", [itin_id(1)]).fetchall()[0][0] == n_ev


async def test_crash_and_diagnosis_repushes_keep_one_row(pusher, data):
    crash = fixture("crash.json")
    await pusher.push("crash", crash)
    compact(data)
    crash["probability"] = 99
    await pusher.push("crash", crash)
    await pusher.push("crash", crash)
    for _ in range(3):
        await pusher.push("diagnosis", None, raw=fixture_bytes("diagnosis.json"))
    compact(data)
    con = queries.connect(data)
    assert con.execute("SELECT crash_id, probability FROM crashes").fetchall() == [(crash["crashId"], 99.0)]
    assert con.execute("SELECT count(*) FROM diagnoses").fetchall() == [(1,)]


async def test_odd_shape_is_quarantined_failed_and_the_batch_goes_on(pusher, data):
    await pusher.push("trip", None, raw=fixture_bytes("trip_odd_shape.json"))
    await pusher.push("trip", trip(itin_id(7)))
    await pusher.push("crash", {"crashId": "c1", "parameters": "not an object"})
    stats, failed = compact(data)
    assert (stats.stored, stats.failed) == (1, 2)
    reasons = {f[3]: f[7] for f in failed}
    odd = fixture("trip_odd_shape.json")["itinId"]
    assert "itineraryStatistics.distance" in reasons[odd] and "fifteen km" in reasons[odd]
    assert "parameters" in reasons["c1"]
    con = queries.connect(data)
    assert con.execute("SELECT itin_id FROM trips").fetchall() == [(itin_id(7),)]
    # a later good push of the same trip resolves the FAILED item
    good = fixture("trip_small.json")
    assert good["itinId"] == odd
    await pusher.push("trip", good)
    compact(data)
    with queries.connect(data) as con2:
        assert con2.execute("SELECT count(*) FROM trips WHERE itin_id = ?", [odd]).fetchall() == [(1,)]
    _, failed = compact(data)
    assert [f[3] for f in failed] == ["c1"]


async def test_a_broken_repush_does_not_hide_the_good_version(pusher, data):
    good = fixture("trip_small.json")
    await pusher.push("trip", good)
    await pusher.push("trip", None, raw=fixture_bytes("trip_odd_shape.json"))  # same itinId, broken
    stats, failed = compact(data)
    assert (stats.stored, stats.failed) == (1, 1)
    con = queries.connect(data)
    assert con.execute("SELECT itin_id, distance_m FROM trips").fetchall() == [
        (good["itinId"], good["itineraryStatistics"]["distance"])]
    assert len(failed) == 1


async def test_numbers_in_any_json_form_are_numbers(pusher, data):
    body = trip(itin_id(3))
    body["itineraryStatistics"]["distance"] = "1234.5"
    body["itineraryStatistics"]["subdispNb"] = 19.0
    body["route"]["gpsVelocity"] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    await pusher.push("trip", body)
    stats, _ = compact(data)
    assert stats.failed == 0
    con = queries.connect(data)
    assert con.execute("SELECT distance_m, subdisp_nb FROM trips").fetchall() == [(1234.5, 19)]
    assert con.execute("SELECT sum(speed_kmh) FROM trip_samples").fetchall() == [(55.0,)]


async def test_many_trips_partition_by_team_and_date(make_pusher, acme, globex, data):
    pa_, pg = await make_pusher(acme), await make_pusher(globex)
    for i in range(6):
        await pa_.push("trip", trip(itin_id(i), start=f"2025-01-0{1 + i % 3}T08:00:00.000+0000"))
    await pg.push("trip", trip(itin_id(100), start="2025-02-01T08:00:00.000+0000"))
    compact(data)
    dirs = sorted(str(p.relative_to(data / "lake" / "trips")) for p in (data / "lake" / "trips").glob("*/*"))
    assert dirs == ["team=acme/date=2025-01-01", "team=acme/date=2025-01-02", "team=acme/date=2025-01-03",
                    "team=globex/date=2025-02-01"]
    con = queries.connect(data)
    assert con.execute("SELECT team_id, date, count(*) FROM trips GROUP BY ALL ORDER BY ALL").fetchall() == [
        ("acme", dt.date(2025, 1, 1), 2), ("acme", dt.date(2025, 1, 2), 2), ("acme", dt.date(2025, 1, 3), 2),
        ("globex", dt.date(2025, 2, 1), 1)]
    # a team connection sees only its team
    with queries.connect(data, team="globex") as g:
        assert g.execute("SELECT DISTINCT team_id FROM trips").fetchall() == [("globex",)]
        assert g.execute("SELECT count(*) FROM trip_samples").fetchall() == [(10,)]


async def test_small_files_are_merged(pusher, data):
    from lake.compactor import Compactor
    with Compactor(data, merge_min_files=4) as c:
        for i in range(5):
            await pusher.push("trip", trip(itin_id(i)))
            c.step()
        live = [f for f in c.catalog.live_files("trips")]
        assert len(live) == 5
        merged = c.merge_small_files()
        assert merged >= 5
        assert len(c.catalog.live_files("trips")) == 1
    con = queries.connect(data)
    assert con.execute("SELECT count(*), count(DISTINCT itin_id) FROM trips").fetchall() == [(5, 5)]
    assert con.execute("SELECT count(*) FROM trip_samples").fetchall() == [(50,)]


def test_docs_tables_md_matches_the_schemas():
    from pathlib import Path

    from lake.schema import markdown
    doc = Path(__file__).resolve().parent.parent / "docs" / "tables.md"
    assert doc.read_text() == markdown(), "regenerate with: python -m lake.schema > docs/tables.md"


async def test_merged_files_have_full_row_groups(pusher, data):
    import pyarrow.parquet as pq
    from lake.compactor import Compactor
    with Compactor(data, merge_min_files=4) as c:
        for i in range(6):
            await pusher.push("trip", trip(itin_id(i)))
            c.step()
        c.merge_small_files()
        [(_, _, _, _, path, rows, _)] = c.catalog.live_files("trip_samples")
    meta = pq.ParquetFile(data / path).metadata
    assert rows == 60 and meta.num_row_groups == 1  # not one row group per merged input file


def test_merge_memory_stays_near_one_row_group(tmp_path):
    """A merge streams its inputs: a large input file is never held whole (decompressed it can
    be ten times its size on disk). The merge runs in a child process, whose Arrow pool peak is
    the merge's own."""
    import subprocess
    import sys
    make = f"""
import pyarrow as pa, pyarrow.compute as pc
from lake import files as lf
from lake.schema import SCHEMAS
s = SCHEMAS["trip_samples"]
n = 1_200_000
cols = {{f.name: pc.cast(pc.random(n), f.type) if pa.types.is_floating(f.type)
         else pa.array(range(n), f.type) if pa.types.is_integer(f.type) else pa.nulls(n, f.type) for f in s}}
t = pa.table(cols, schema=s)
a = lf.write_file({str(tmp_path)!r}, "trip_samples", "acme", "2026-01-01", t)
b = lf.write_file({str(tmp_path)!r}, "trip_samples", "acme", "2026-01-01", t.slice(0, 1000))
print(t.nbytes, b.path, a.path)
"""
    size, small, large = subprocess.run([sys.executable, "-c", make], capture_output=True, text=True,
                                        check=True).stdout.split()
    merge = f"""
import pyarrow as pa
from lake import files as lf
m = lf.merge_files({str(tmp_path)!r}, "trip_samples", "acme", "2026-01-01", [{small!r}, {large!r}])
print(m.rows, pa.default_memory_pool().max_memory())
"""
    rows, peak = map(int, subprocess.run([sys.executable, "-c", merge], capture_output=True, text=True,
                                         check=True).stdout.split())
    assert rows == 1_201_000
    # reading the large input whole took 2x its size (341 MB here); streamed: ~3 row groups (114 MB)
    assert peak < int(size) * 0.8, (peak, size)


async def test_unreadable_routes_fail_their_trip_only_and_say_which_array(pusher, data):
    bad_value = trip(itin_id(20))
    bad_value["route"]["latitude"][3] = "north"
    bad_length = trip(itin_id(21))
    bad_length["route"]["longitude"] = bad_length["route"]["longitude"][:-2]
    not_array = trip(itin_id(22))
    not_array["route"]["gpsVelocity"] = {"speed": 3}
    null_array = trip(itin_id(23))
    null_array["route"]["gpsElevation"] = None        # an absent sensor: its column is NULL
    for body in (bad_value, bad_length, not_array, null_array, trip(itin_id(24))):
        status, _ = await pusher.push("trip", body)
        assert status == 200
    stats, failed = compact(data)
    assert (stats.stored, stats.failed) == (2, 3)
    reasons = {f[3]: f[7] for f in failed}
    assert reasons[itin_id(20)].startswith("route.latitude: expected an array of numbers") and "[3]" in reasons[itin_id(20)]
    assert reasons[itin_id(21)] == "route.longitude: has 8 samples, route.gpsDate has 10"
    assert reasons[itin_id(22)] == 'route.gpsVelocity: expected an array of numbers, got {"speed":3}'
    con = queries.connect(data)
    assert con.execute("SELECT itin_id, count(*), count(elevation_m), count(latitude) FROM trip_samples "
                       "GROUP BY 1 ORDER BY 1").fetchall() == [(itin_id(23), 10, 0, 10), (itin_id(24), 10, 10, 10)]


def test_both_ways_of_reading_a_route_agree():
    """A route of numbers and nulls only is read in one pass; anything else in it (here an extra
    array of strings) takes the path that can name a bad value. Both must give the same trip."""
    from lake.project import numeric_route, split_trip
    body = trip(itin_id(1))
    body["route"]["stoppingStateRoute"] = [0, 1, 1.5, None]   # an array without a column: kept in extra
    body["route"]["gpsElevation"] = None                      # an absent sensor
    body["route"]["latitude"] = [int(v) for v in body["route"]["latitude"]]   # integers are numbers too
    odd = orjson.loads(orjson.dumps(body))
    odd["route"]["labels"] = ["a", "b"]
    assert numeric_route(orjson.dumps(body["route"])) is not None  # the one-pass way takes this route...
    assert numeric_route(orjson.dumps(odd["route"])) is None       # ...and not this one
    fast, slow = split_trip(orjson.dumps(body)), split_trip(orjson.dumps(odd))
    assert slow[0]["route"].pop("labels") == ["a", "b"]
    assert fast[0] == slow[0] and fast[2] is None and slow[2] is None
    assert fast[0]["route"] == {"stoppingStateRoute": [0, 1, 1.5, None]}
    (n, arrays), (m, arrays2) = fast[1], slow[1]
    assert n == m == len(body["route"]["gpsDate"]) and "gpsElevation" not in arrays
    assert arrays.keys() == arrays2.keys() and all(arrays[k].equals(arrays2[k]) for k in arrays)


async def test_projection_processes_give_the_same_lake(pusher, data, tmp_path, monkeypatch):
    """Trips split in worker processes (what a backlog gets) land exactly as when split in the
    compactor itself, failures included, whether bodies and routes travel through shared-memory
    files (which are all gone afterwards) or through the pipe."""
    import os
    import shutil
    from lake import shm as lake_shm
    shm = tmp_path / "shm"
    shm.mkdir()
    os.utime(shm, (0, 0))
    for i in range(40):
        body = trip(itin_id(i), start=f"2025-01-0{1 + i % 3}T08:00:00.000+0000")
        if i % 7 == 3:
            body["route"]["latitude"][2] = "north"
        await pusher.push("trip", body)
    lakes = {}
    for workers, shm_dir in ((0, None), (2, str(shm)), ("2, pipe", None), ("2, missing", str(tmp_path / "none"))):
        monkeypatch.setattr(lake_shm, "DIR", shm_dir)
        lake = tmp_path / f"workers-{workers}"
        shutil.copytree(data / "log", lake / "log", ignore=shutil.ignore_patterns(".lock"))
        with Compactor(lake, workers=int(str(workers)[0]), parallel_min_trips=1) as c:
            stats = c.drain()
            used_processes = bool(c.splitter.processes)
            failed = sorted((f[3], f[7]) for f in c.catalog.failed_items())
        with queries.connect(lake) as con:
            lakes[workers] = (stats.stored, failed, con.execute(
                "SELECT itin_id, date, n_samples, distance_m FROM trips ORDER BY 1").fetchall(), con.execute(
                "SELECT itin_id, seq, ts, latitude, speed_kmh FROM trip_samples ORDER BY 1, 2").fetchall())
        assert used_processes == (workers != 0)
    assert lakes[0][0] == 34 and len(lakes[0][1]) == 6 and len(lakes[0][3]) == 340
    assert lakes[0] == lakes[2] == lakes["2, pipe"] == lakes["2, missing"]  # the last: the pipe, no error
    assert shm.stat().st_mtime > 0 and list(shm.iterdir()) == []  # used, and nothing left there


def test_projection_processes_die_with_a_killed_compactor(tmp_path):
    """A compactor killed with SIGKILL leaves no projection process behind."""
    import os
    import signal
    import subprocess
    import sys
    import time
    code = f"""
import sys, time
from lake.compactor import Compactor
if __name__ == "__main__":
    c = Compactor({str(tmp_path)!r}, workers=2, parallel_min_trips=1)
    c.splitter.split([(0, b'{{}}'), (1, b'{{}}')])
    print(*c.splitter.processes, flush=True)
    time.sleep(60)
"""
    script = tmp_path / "compactor_script.py"
    script.write_text(code)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        pids = [int(x) for x in p.stdout.readline().split()]
        assert pids and all(os.path.exists(f"/proc/{pid}") for pid in pids)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_idle_projection_processes_are_released(tmp_path):
    import os
    import time
    from lake.compactor import Compactor
    with Compactor(tmp_path, workers=2, parallel_min_trips=1) as c:
        c.splitter.split([(0, b'{}'), (1, b'{}')])
        pids = c.splitter.processes
        assert pids and not c.release_idle_workers(after=60)  # just used: kept
        c.splitter.last_used -= 61
        assert c.release_idle_workers(after=60) and not c.splitter.processes
        deadline = time.monotonic() + 5
        while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(os.path.exists(f"/proc/{p}") for p in pids)
        c.splitter.split([(0, b'{}'), (1, b'{}')])  # a new backlog starts them again
        assert c.splitter.processes


async def test_a_step_whose_write_fails_leaves_no_file_behind(pusher, data, monkeypatch):
    """One partition file failing (e.g. the disk) fails the step; the files the other jobs of
    the pool wrote are removed with it, not left as orphans to pile up at every retry."""
    import pytest
    from lake import files as lf
    for i in range(6):
        await pusher.push("trip", trip(itin_id(i), start=f"2025-01-0{1 + i % 3}T08:00:00.000+0000"))
    real_write = lf.write_file

    def failing_write(data_dir, tbl, team, date, table):
        if tbl == "trip_events" and date == "2025-01-02":
            raise OSError(28, "No space left on device")
        return real_write(data_dir, tbl, team, date, table)
    monkeypatch.setattr(lf, "write_file", failing_write)
    with Compactor(data) as c:
        with pytest.raises(OSError):
            c.step()
        assert c.catalog.live_files() == []
    assert sorted(p.name for p in (data / "lake").rglob("*.parquet") if "_empty" not in p.parts) == []
    monkeypatch.setattr(lf, "write_file", real_write)
    stats, _ = compact(data)  # and the next attempt stores everything
    assert stats.stored == 6


async def test_a_failed_step_in_a_pipelined_backlog_loses_and_doubles_nothing(pusher, data, monkeypatch):
    """A backlog is read and split ahead (up to two batches); when a step fails, what was read
    ahead of it must not be used, and the retried steps store every trip exactly once."""
    from ingest.record import Kind
    from lake.catalog import Catalog
    for i in range(14):
        await pusher.push("trip", trip(itin_id(i), start=f"2025-01-0{1 + i % 3}T08:00:00.000+0000"))
    from lake.writer import Writer
    real_write = Writer.write_and_commit
    calls = []

    def write_failing_once(self, p, routes, failpoint="compactor.before_commit", meanwhile=None):
        calls.append(1)
        if len(calls) == 2:
            if meanwhile is not None:
                meanwhile()  # the read-ahead happened, then the disk fails
            raise OSError(28, "No space left on device")
        return real_write(self, p, routes, failpoint, meanwhile)
    monkeypatch.setattr(Writer, "write_and_commit", write_failing_once)
    stored = 0
    with Compactor(data, batch_records=4, parallel_min_trips=2) as c:
        for _ in range(20):
            try:
                s = c.step()
            except OSError:
                continue
            if not s.records:
                break
            stored += s.stored
    assert len(calls) == 5 and stored == 14  # 4 steps of 4, 4, 4 and 2 trips, one of them twice
    con = queries.connect(data)
    assert con.execute("SELECT count(*), count(DISTINCT itin_id) FROM trips").fetchall() == [(14, 14)]
    assert con.execute("SELECT count(*) FROM trip_samples").fetchall() == [(140,)]
    cat = Catalog(data)  # the push counts, committed with the steps, are not doubled either
    counts = cat.con.execute("SELECT sum(received), sum(stored) FROM push_stats WHERE kind = ?", (Kind.TRIP,)).fetchone()
    cat.close()
    assert counts == (14, 14)


def test_a_compactor_closed_mid_split_leaves_nothing_in_shared_memory(tmp_path, monkeypatch):
    """Bodies handed to the projection processes through shared memory, then the compactor
    closes without collecting the split (a stop during a read-ahead): no file stays behind."""
    from lake import shm as lake_shm
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(lake_shm, "DIR", str(shm))
    with Compactor(tmp_path / "data", workers=2, parallel_min_trips=1) as c:
        c.splitter.split([(k, b'{"itinId": "x%d"}' % k + b" " * 3_000_000) for k in range(8)])
    assert list(shm.iterdir()) == []

"""Route decoding on its own (``lake.routes``): raw JSON arrays or lists of numbers become float64
Arrow arrays, a route that cannot be read is an error naming its arrays, and a batch's routes
(gathered in chunks, sent back from the projection processes by pickle as Arrow IPC) become
``trip_samples`` rows."""
from __future__ import annotations

import datetime as dt
import pickle

import msgspec
import orjson
import pyarrow as pa
import pytest

from lake import routes
from lake.routes import RouteError, Routes
from lake.schema import SCHEMAS

UTC = dt.timezone.utc
SAMPLES = SCHEMAS["trip_samples"]
RAW = msgspec.json.Decoder(dict[str, msgspec.Raw])


def raw(route: dict) -> dict[str, msgspec.Raw]:
    """A route's arrays as raw JSON, as ``split_trip`` hands them to ``decode``."""
    return RAW.decode(orjson.dumps(route))


def route(n: int, t0: float = 1_737_409_561.0, **extra) -> dict:
    return {"gpsDate": [t0 + i for i in range(n)], "latitude": [48.0 + i / 1000 for i in range(n)],
            "longitude": [2.0 + i / 1000 for i in range(n)], "gpsVelocity": [float(10 * i) for i in range(n)],
            **extra}


def common(rows: list[tuple[str, int]]) -> dict[str, pa.Array]:
    """The other trip_samples columns, one value per route: (itin_id, log_offset)."""
    t = SAMPLES.field
    return {"itin_id": pa.array([i for i, _ in rows], t("itin_id").type),
            "team_id": pa.array(["acme"] * len(rows), t("team_id").type),
            "date": pa.array([dt.date(2025, 1, 20)] * len(rows), t("date").type),
            "received_at": pa.array([dt.datetime(2025, 1, 20, 22, tzinfo=UTC)] * len(rows), t("received_at").type),
            "log_part": pa.array(["p0"] * len(rows), t("log_part").type),
            "log_offset": pa.array([o for _, o in rows], t("log_offset").type)}


def test_decode_reads_each_array_as_float64_and_leaves_out_absent_ones():
    n, arrays = routes.decode(raw({**route(3), "gpsElevation": None, "roll": [1, 2, 3]}))
    assert n == 3
    assert set(arrays) == {"gpsDate", "latitude", "longitude", "gpsVelocity", "roll"}  # null and absent: left out
    assert all(a.type == pa.float64() for a in arrays.values())
    assert arrays["roll"].to_pylist() == [1.0, 2.0, 3.0]  # integers are numbers too
    assert arrays["latitude"].to_pylist() == route(3)["latitude"]


def test_arrays_without_a_column_are_not_decoded():
    n, arrays = routes.decode(raw({**route(2), "stoppingStateRoute": ["a", "b"]}))
    assert n == 2 and "stoppingStateRoute" not in arrays


def test_from_lists_gives_what_decode_gives():
    r = {**route(4), "gpsAccuracy": [5, None, 7.5, 8], "gpsHeading": None}
    n, a = routes.from_lists(r)
    m, b = routes.decode(raw(r))
    assert n == m == 4 and a.keys() == b.keys()
    assert all(a[k].equals(b[k]) for k in a)


def test_an_empty_route_has_no_samples():
    assert routes.decode(raw({})) == (0, {})
    assert routes.from_lists({"gpsDate": None}) == (0, {})


def test_a_length_mismatch_names_both_arrays():
    r = route(3)
    r["longitude"] = r["longitude"][:2]
    for decoded in (lambda: routes.decode(raw(r)), lambda: routes.from_lists(r)):
        with pytest.raises(RouteError) as e:
            decoded()
        assert str(e.value) == "route.longitude: has 2 samples, route.gpsDate has 3"


def test_an_array_that_is_not_numbers_is_named():
    with pytest.raises(RouteError, match=r"^route\.gpsVelocity: expected an array of numbers"):
        routes.decode(raw({**route(2), "gpsVelocity": [1, "fast"]}))
    with pytest.raises(RouteError, match=r"^route\.latitude: expected an array of numbers"):
        routes.decode(raw({**route(2), "latitude": {"a": 1}}))


def test_integers_beyond_64_bits_become_their_nearest_double_and_beyond_a_double_fail():
    n, a = routes.from_lists({"gpsDate": [1.0, 2.0], "roll": [10 ** 30, None]})
    assert n == 2 and a["roll"].to_pylist() == [1e30, None]
    with pytest.raises(RouteError, match=r"^route\.pitch: number beyond the range of a 64-bit float at \$\[1\]$"):
        routes.from_lists({"gpsDate": [1.0, 2.0], "pitch": [0, 10 ** 400]})


def test_nulls_are_missing_sensors_in_the_samples():
    """A null in an array is that sample's missing value; an absent or null array is a sensor the
    phone does not have: its column is null for every sample of the trip."""
    n, arrays = routes.decode(raw({**route(3), "gpsVelocity": [1.5, None, 3.0], "gpsElevation": None}))
    t = Routes.chunk([(7, n, arrays)]).samples([7], common([("itin", 40)]))
    assert t["speed_kmh"].to_pylist() == [1.5, None, 3.0]
    assert t["elevation_m"].null_count == 3 and t["yaw"].null_count == 3
    assert t["latitude"].null_count == 0


def test_samples_are_the_rows_of_the_routes_asked_for_in_order():
    a, b, empty = route(3), route(2, t0=1_737_500_000.5), {}
    rs = Routes.chunk([(10, *routes.from_lists(a)), (11, *routes.from_lists(b)), (12, *routes.from_lists(empty))])
    assert [rs.count(r) for r in (10, 11, 12)] == [3, 2, 0]
    t = rs.samples([11, 12, 10], common([("b", 2), ("e", 3), ("a", 1)]))
    assert t.schema == SAMPLES
    assert t["itin_id"].to_pylist() == ["b", "b", "a", "a", "a"]
    assert t["log_offset"].to_pylist() == [2, 2, 1, 1, 1]
    assert t["seq"].to_pylist() == [0, 1, 0, 1, 2]
    assert t["ts"].to_pylist() == [dt.datetime.fromtimestamp(s, UTC) for s in b["gpsDate"] + a["gpsDate"]]
    assert t["latitude"].to_pylist() == b["latitude"] + a["latitude"]
    assert set(t["team_id"].to_pylist()) == {"acme"} and set(t["date"].to_pylist()) == {dt.date(2025, 1, 20)}


def test_routes_without_samples_give_an_empty_table_of_the_schema():
    rs = Routes.chunk([(0, *routes.from_lists({}))])
    t = rs.samples([0], common([("a", 1)]))
    assert t.num_rows == 0 and t.schema == SAMPLES
    assert Routes.chunk([]).samples([], common([])).schema == SAMPLES


def test_extend_takes_the_routes_of_other_chunks():
    first = Routes.chunk([(0, *routes.from_lists(route(2)))])
    second = Routes.chunk([(5, *routes.from_lists(route(3, t0=1_737_600_000.0))), (6, *routes.from_lists(route(1)))])
    whole = Routes()
    whole.extend(first)
    whole.extend(Routes())   # a projection process that had no trip with a route
    whole.extend(second)
    assert [whole.count(r) for r in (0, 5, 6)] == [2, 3, 1]
    t = whole.samples([6, 0, 5], common([("c", 6), ("a", 0), ("b", 5)]))
    assert t["itin_id"].to_pylist() == ["c", "a", "a", "b", "b", "b"]
    assert t["seq"].to_pylist() == [0, 0, 1, 0, 1, 2]
    alone = second.samples([5], common([("b", 5)]))
    assert t.slice(3).equals(alone)


def test_routes_pickle_as_arrow_ipc_and_come_back_the_same():
    """How a projection process sends its chunk back: the chunk as one Arrow IPC stream."""
    decoded = [(3, *routes.decode(raw({**route(4), "gpsVelocity": [1, None, 2, 3]}))),
               (8, *routes.from_lists(route(2, roll=[0.5, 0.25])))]
    rs = Routes.chunk(decoded)
    data = pickle.dumps(rs)
    assert b"pyarrow" not in data  # bytes of an IPC stream, not pickled Arrow arrays
    back = pickle.loads(data)
    assert [back.count(r) for r in (3, 8)] == [4, 2]
    c = common([("x", 3), ("y", 8)])
    assert back.samples([3, 8], c).equals(rs.samples([3, 8], c))
    merged = Routes()
    merged.extend(pickle.loads(pickle.dumps(Routes.chunk([(1, *routes.from_lists(route(1)))]))))
    merged.extend(back)
    assert merged.samples([8], common([("y", 8)])).equals(rs.samples([8], common([("y", 8)])))


@pytest.fixture
def shared(tmp_path):
    """Chunks sent as files in ``tmp_path`` (what a projection process does with /dev/shm)."""
    import os
    routes.share_through(str(tmp_path), os.getpid())
    yield tmp_path
    routes.share_through(None, 0)


def test_routes_travel_as_a_shared_memory_file_mapped_then_removed(shared):
    import os
    decoded = [(3, *routes.decode(raw({**route(4), "gpsVelocity": [1, None, 2, 3]}))),
               (8, *routes.from_lists(route(2, roll=[0.5, 0.25])))]
    rs = Routes.chunk(decoded)
    data = pickle.dumps(rs)
    left = list(shared.iterdir())
    assert len(left) == 1 and left[0].name.startswith(f"pushlake-routes-{os.getpid()}-")
    assert left[0].stat().st_mode & 0o777 == 0o600  # the bodies' numbers: the owner's only
    assert len(data) < 1000  # the pipe carries the file's name, not the numbers
    back = pickle.loads(data)
    assert list(shared.iterdir()) == []  # unlinked once mapped; the arrays live on
    c = common([("x", 3), ("y", 8)])
    assert back.samples([3, 8], c).equals(rs.samples([3, 8], c))


def test_a_full_shared_memory_falls_back_to_the_pipe(shared, monkeypatch):
    def full(*a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(routes.pa, "OSFile", full)
    rs = Routes.chunk([(1, *routes.from_lists(route(3)))])
    data = pickle.dumps(rs)
    assert list(shared.iterdir()) == []  # the partial file is gone
    assert pickle.loads(data).samples([1], common([("a", 1)])).equals(rs.samples([1], common([("a", 1)])))


def test_files_of_a_compactor_that_is_gone_are_removed(tmp_path):
    import os
    import subprocess
    import sys
    from lake import shm
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    orphans = [tmp_path / f"pushlake-routes-{dead}-abc", tmp_path / f"pushlake-bodies-{dead}-def"]
    kept = [tmp_path / f"pushlake-routes-{os.getpid()}-ghi", tmp_path / f"pushlake-bodies-{os.getpid()}-jkl",
            tmp_path / "unrelated", tmp_path / f"pushlake-other-{dead}-x"]
    for p in orphans + kept:
        p.write_bytes(b"x")
    assert shm.remove_orphans(str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)

"""Property: whatever one team pushes, the compactor advances and another team's push shows.

Hypothesis mutates DriveQuant bodies of every kind (fixtures, with leaves replaced by odd JSON
values and by raw number tokens a double cannot hold, keys deleted, route arrays reshaped) and
pushes them to a real ``pushlake serve`` (receiver and compactor) as one team; a good trip of
another team follows. After each example the compactor must have consumed the whole log, the
other team's trip must be in its view, every push acknowledged with 200 must be stored or FAILED
with a reason, and ``/health`` must not report a failing compactor. Bounded to about a minute.
"""
from __future__ import annotations

import itertools
import json
import time
import urllib.error
import urllib.request

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import queries
from lake.catalog import Catalog
from tests.helpers import ServerProcess, create_team, fixture, itin_id, trip

KINDS = {"trip": ("trip_33min.json", "itinId"), "trip/event": ("deletion.json", "itinId"),
         "crash": ("crash.json", "crashId"), "diagnosis": ("diagnosis.json", "userId")}
RAW_NUMBERS = ["1e999", "-1e999", "1e-999", "123456789012345678901234567890", "-9223372036854775809",
               "18446744073709551616", "0.1000000000000000055511151231257827", "-0", "1E400", "5e-324"]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 80), 2 ** 80),
                 st.floats(allow_nan=False, allow_infinity=False), TEXT,
                 st.sampled_from(RAW_NUMBERS).map(lambda r: ("raw", r)))
VALUE = st.recursive(LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def _paths(doc, prefix=()):
    """Every path to a value in the document (objects and arrays alike)."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):  # routes hold thousands: a few of each array are enough
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw):
    kind = draw(st.sampled_from(list(KINDS)))
    name, key = KINDS[kind]
    doc = fixture(name)
    if kind == "trip":  # the small trip, or the 33-minute one with its 2,000-sample route
        doc = draw(st.sampled_from([doc, fixture("trip_small.json")]))
    paths = [p for p in _paths(doc) if p]
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths))
        node = doc
        try:
            for k in path[:-1]:
                node = node[k]
            if isinstance(node, dict) is not isinstance(path[-1], str):
                continue  # a list index into an object an earlier mutation put there: no JSON
            if draw(st.booleans()) and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = draw(VALUE)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation changed the shape above this path
    return kind, key, doc


def _encode(doc, key: str, unique: str) -> bytes:
    """JSON with the raw number tokens spliced in; the key field made unique (a mutated key is
    kept when it is not a non-empty string, so that such pushes meet the receiver's 400)."""
    if isinstance(doc.get(key), str) and doc[key].strip():
        doc[key] = unique
    raws: list[str] = []

    def walk(v):
        if isinstance(v, tuple):
            raws.append(v[1])
            return f"\u0000RAW{len(raws) - 1}\u0000"
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, int) and not -(2 ** 63) <= v < 2 ** 64:
            raws.append(str(v))
            return f"\u0000RAW{len(raws) - 1}\u0000"
        return v
    out = orjson.dumps(walk(doc))
    for i, r in enumerate(raws):
        out = out.replace(f'"\\u0000RAW{i}\\u0000"'.encode(), r.encode())
    return out


def _post(url: str, key: str, path: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/push/{path}", data=body,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _health(url: str) -> dict:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("props") / "data"
    keys = {t: create_team(data, t) for t in ("acme", "globex")}
    server = ServerProcess(data)
    yield data, keys, server
    server.stop()


_ids = itertools.count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pushes=st.lists(mutated(), min_size=1, max_size=5))
def test_any_push_of_one_team_leaves_the_lake_working_for_the_others(service, pushes):
    data, keys, server = service
    acked: list[tuple[str, str]] = []
    for kind, key, doc in pushes:
        unique = f"h{next(_ids)}"
        status, body = _post(server.url, keys["acme"], kind, _encode(doc, key, unique))
        assert status in (200, 400), body  # nothing else: no 500, never a text error
        if status == 200:
            acked.append((kind, unique))
    good = itin_id(10 ** 6 + next(_ids))
    assert _post(server.url, keys["globex"], "trip", orjson.dumps(trip(good)))[0] == 200
    deadline = time.monotonic() + 30
    while (h := _health(server.url))["compactor"]["lagRecords"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h["compactor"]["lagRecords"] == 0, h
    assert not [r for r in h["reasons"] if "compactor" in r], h
    with queries.connect(data, team="globex") as con:
        assert con.execute("SELECT count(*) FROM trips WHERE itin_id = ?", [good]).fetchone() == (1,)
    cat = Catalog(data, readonly=True)
    try:
        failed = {(f[1], f[3].split(":")[0]) for f in cat.failed_items()}
    finally:
        cat.close()
    where = {"trip": ("trips", "itin_id", 1), "trip/event": ("trip_deletions", "itin_id", 2),
             "crash": ("crashes", "crash_id", 3), "diagnosis": ("diagnoses", "user_id", 4)}
    with queries.connect(data, team="acme") as con:
        for kind, unique in acked:
            table, column, k = where[kind]
            stored = con.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?", [unique]).fetchone()[0]
            assert stored == 1 or (k, unique) in failed, (kind, unique)

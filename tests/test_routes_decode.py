"""Route arrays read by the C extension (``lake._routes``) are exactly what msgspec gave before.

``lake.routes.decode`` reads each array of numbers and nulls straight into doubles; anything else
takes the msgspec way, then value by value. The doubles must be the same bit for bit (-0.0,
subnormals, integers beyond 2**53 and 64 bits, 17-digit decimals, exponents), nulls stay nulls,
and what is not a number is named with its array and index. The extension must actually be built
by the project's install and used; ``PUSHLAKE_NATIVE_ROUTES=0`` turns it off and changes nothing
but the speed.
"""
from __future__ import annotations

import os
import subprocess
import sys

import msgspec
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake import routes
from lake.project import numeric_route, split_trip
from lake.routes import RouteError
from tests.helpers import ROOT, fixture, fixture_bytes

RAW = msgspec.json.Decoder(dict[str, msgspec.Raw])
NUMBERS = msgspec.json.Decoder(list[float | None])


def native(raw: bytes | msgspec.Raw) -> pa.Array | None:
    """``routes.native``, failing with the reason when the extension is not built."""
    assert routes._routes is not None, "lake._routes is not built: run `make install` (needs gcc)"
    return routes.native(raw)


def todays(raw: bytes) -> pa.Array:
    """What ``decode`` gave for an array before the extension: msgspec's floats, then Arrow."""
    return pa.array(NUMBERS.decode(raw), pa.float64())


def bits(a: pa.Array) -> tuple[list, list]:
    """Null positions and the doubles' bits (so that -0.0 differs from 0.0)."""
    return a.is_null().to_pylist(), a.fill_null(0.0).view(pa.int64()).to_pylist()


def same(a: pa.Array, b: pa.Array) -> bool:
    return a.type == b.type == pa.float64() and bits(a) == bits(b)


def arrays_of(body: bytes) -> dict[str, msgspec.Raw]:
    return RAW.decode(RAW.decode(body)["route"])


# --------------------------------------------------------------------------- built and used

def test_the_extension_is_built_by_the_install_and_used():
    """`pip install -e .` (make install) compiles lake/_routes.c; without it every route would
    silently take the slow way, so its absence is a failure here, not a skip."""
    assert routes._routes is not None, "lake._routes is not built: run `make install` (needs gcc)"
    assert routes.NATIVE, "PUSHLAKE_NATIVE_ROUTES=0 is set: the suite tests the extension"
    # an array read by the extension is its own bytes wrapped, not a list copied into Arrow's pool
    arrays = arrays_of(fixture_bytes("trip_33min.json"))
    before = pa.total_allocated_bytes()
    n, out = routes.decode(arrays)
    assert n == 1996 and len(out) == 13
    assert pa.total_allocated_bytes() == before


def test_without_the_extension_the_same_arrays_come_back():
    """PUSHLAKE_NATIVE_ROUTES=0 (the A/B switch of bench/README.md): the msgspec one-pass way, the
    same doubles, and the same trip document."""
    script = ("import sys, pyarrow as pa; from lake import routes; from lake.project import split_trip\n"
              "doc, (n, arrays), problem = split_trip(sys.stdin.buffer.read())\n"
              "assert not routes.NATIVE and problem is None\n"
              "b = pa.RecordBatch.from_pydict(arrays); s = pa.BufferOutputStream()\n"
              "w = pa.ipc.new_stream(s, b.schema); w.write_batch(b); w.close()\n"
              "sys.stdout.buffer.write(s.getvalue().to_pybytes())\n")
    body = fixture_bytes("trip_33min.json")
    p = subprocess.run([sys.executable, "-c", script], input=body, capture_output=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "PUSHLAKE_NATIVE_ROUTES": "0"})
    assert p.returncode == 0, p.stderr.decode()
    slow = pa.ipc.open_stream(p.stdout).read_next_batch()
    doc, (n, fast), problem = split_trip(body)
    assert problem is None and n == slow.num_rows == 1996
    assert sorted(fast) == sorted(slow.schema.names)
    assert all(same(fast[k], slow.column(k)) for k in fast)


# --------------------------------------------------------------------------- same arrays as today

@pytest.mark.parametrize("name", ["trip_33min.json", "trip_small.json"])
def test_fixture_routes_are_todays_arrays(name):
    body = fixture_bytes(name)
    arrays = arrays_of(body)
    n, out = routes.decode(arrays)
    m, one_pass = routes.from_lists(numeric_route(RAW.decode(body)["route"]))
    assert n == m and out.keys() == one_pass.keys()
    for k, a in out.items():
        assert native(arrays[k]) is not None  # read by the extension, not the fallback
        assert same(a, todays(bytes(arrays[k]))) and same(a, one_pass[k]), k


def test_generated_trips_give_todays_arrays():
    from bench.gen import trip_bodies
    for _, _, body in trip_bodies(3, teams=2, days=3):
        arrays = arrays_of(body)
        _, out = routes.decode(arrays)
        assert all(same(a, todays(bytes(arrays[k]))) for k, a in out.items())


EDGES = ["0", "-0", "-0.0", "-0e0", "0e5", "1e-7", "1E+2", "1e007", "5e-324", "2.4703282292062328e-324", "1e-400",
         "2.2250738585072011e-308", "1.7976931348623157e308", "9007199254740993", "18446744073709551616",
         "-9223372036854775809", "123456789012345678901234567890", "0.1000000000000000055511151231257827",
         "0.30000000000000004", "1e22", "1e23", "9007199254740992e22", "123456789e-30", "48.858293", "null",
         "0." + "0" * 300 + "1", "1" + "0" * 400 + "e-400"]


def test_edge_tokens_give_todays_doubles():
    for t in EDGES:
        raw = f"[{t}]".encode()
        assert native(raw) is not None, t
        assert same(native(raw), todays(raw)), t
    raw = ("[ " + " ,\n\t".join(EDGES) + " ]").encode()  # whitespace between tokens, as a pretty printer writes
    assert same(native(raw), todays(raw))
    assert native(b"[]").to_pylist() == [] and native(b" [ ] ").to_pylist() == []


def test_negative_zero_as_an_integer_is_zero_as_msgspec_reads_it():
    assert bits(native(b"[-0, -0.0]"))[1] == [0, -(1 << 63)]


DOUBLE = st.floats(allow_nan=False, allow_infinity=False)
WIDTH = st.sampled_from(["{!r}", "{:.17e}", "{:.17E}", "{:.6f}", "{:.3g}", "{:.20g}"])


@st.composite
def token(draw) -> str:
    kind = draw(st.sampled_from(["double", "int", "null", "text"]))
    if kind == "double":
        return draw(WIDTH).format(draw(DOUBLE)).replace("inf", "1e999")
    if kind == "int":
        return str(draw(st.integers(-(2 ** 80), 2 ** 80)))
    if kind == "null":
        return "null"
    return draw(st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][-+]?[0-9]{1,3})?\Z"))


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(token(), max_size=40), spaces=st.sampled_from(["", " ", "\n  "]))
def test_any_number_array_gives_msgspecs_doubles_bit_for_bit(tokens, spaces):
    raw = ("[" + spaces + ("," + spaces).join(tokens) + spaces + "]").encode()
    try:
        want = todays(raw)
    except msgspec.ValidationError:  # a number beyond a double: the extension leaves it to the slow way
        assert native(raw) is None
        return
    got = native(raw)
    assert got is not None and same(got, want), raw


# --------------------------------------------------------------------------- fallbacks

def decoded(**arrays) -> dict[str, list]:
    route = {"gpsDate": [1.0] * max((len(v) for v in arrays.values() if isinstance(v, list)), default=1), **arrays}
    _, out = routes.decode(RAW.decode(orjson.dumps(route)))
    return {k: a.to_pylist() for k, a in out.items()}


def test_numeric_strings_are_numbers():
    """README "Choices": numbers given as numeric strings are numbers, in a route as anywhere."""
    raw = b'["1234.5", 2, null, "-0.0", " 7 ", "1e-7"]'
    assert native(raw) is None  # not an array of numbers: the slow way reads it
    got = decoded(latitude=["1234.5", 2, None, "-0.0", " 7 ", "1e-7"])["latitude"]
    assert got == [1234.5, 2.0, None, -0.0, 7.0, 1e-7] and str(got[3]) == "-0.0"


def test_a_word_names_its_array_and_index():
    with pytest.raises(RouteError) as e:
        decoded(latitude=[48.1, "1.5", "north", 48.2])
    assert str(e.value) == 'route.latitude: expected an array of numbers, got "north" at $[2]'


@pytest.mark.parametrize("value, shown", [([2], "[2]"), ({"a": 1}, '{"a":1}'), (True, "true"), ("", '""')])
def test_anything_else_in_an_array_is_named(value, shown):
    with pytest.raises(RouteError) as e:
        decoded(gpsVelocity=[1, value])
    assert str(e.value) == f"route.gpsVelocity: expected an array of numbers, got {shown} at $[1]"


def test_numbers_beyond_a_double_name_their_index():
    for bad in (b"1e999", b"-1E400", b'"1e999"', b"1" + b"0" * 400):
        body = b'{"route":{"gpsDate":[1,2],"roll":[0,' + bad + b']}}'
        with pytest.raises(RouteError) as e:
            routes.decode(arrays_of(body))
        assert str(e.value) == "route.roll: number beyond the range of a 64-bit float at $[1]", bad


def test_huge_integers_are_their_nearest_double():
    raw = b"[123456789012345678901234567890, 18446744073709551617, 9007199254740993]"
    assert native(raw).to_pylist() == [1.2345678901234568e29, 18446744073709551616.0, 9007199254740992.0]
    assert same(native(raw), todays(raw))


def test_nulls_stay_nulls_and_null_or_absent_arrays_are_left_out():
    body = orjson.dumps({"route": {"gpsDate": [1, 2, 3], "latitude": [None, 48.5, None], "longitude": None}})
    n, out = routes.decode(arrays_of(body))
    assert n == 3 and sorted(out) == ["gpsDate", "latitude"]
    assert out["latitude"].to_pylist() == [None, 48.5, None] and out["latitude"].null_count == 2


def test_lengths_are_checked_as_before():
    with pytest.raises(RouteError) as e:
        decoded(latitude=[1.0, 2.0], longitude=[1.0])
    assert str(e.value) == "route.longitude: has 1 samples, route.gpsDate has 2"


def test_split_trip_reports_a_bad_route_and_keeps_the_trip():
    body = fixture("trip_small.json")
    body["route"]["latitude"][3] = "north"
    doc, route, problem = split_trip(orjson.dumps(body))
    assert route is None and problem == 'route.latitude: expected an array of numbers, got "north" at $[3]'
    assert doc["itinId"] == body["itinId"]
    body["route"]["latitude"][3] = "48.25"
    body["route"]["stoppingStateRoute"] = [0, 1]   # an array without a column stays in extra, as pushed
    doc, (n, arrays), problem = split_trip(orjson.dumps(body))
    assert problem is None and arrays["latitude"][3].as_py() == 48.25 and doc["route"] == {"stoppingStateRoute": [0, 1]}

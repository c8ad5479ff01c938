"""Route arrays benchmark: ways to read a route's JSON number arrays into float64 Arrow arrays.

Run by hand, from the repository root:
  .venv/bin/python -m bench.routes_bench [--quick] [--trips N] [--hard-trips N] [--runs R] [--results-dir DIR]

Issue 14, item 2 (compaction at native speed): a trip's projection spends most of its CPU turning
its route's ~26,000 numbers into Python floats between the JSON decoder and Arrow. Each
candidate below reads the same arrays, each the raw JSON of one array as ``lake.routes.decode``
receives it (a ``msgspec.Raw``), and is compared with today's way, measured in the same run.

Why it is built this way:
- Two sets of routes. ``gen``: bench.gen's trips (the 33-minute fixture, 13 arrays of 1,996
  samples: 6-decimal coordinates, integers, one decimal). ``hard``: routes of the same shape whose
  values are random doubles written with all their 17 digits, exponents from 1e-300 to 1e300,
  big integers, -0.0 and 1 % nulls: the numbers a shortcut parser cannot take.
- Every candidate's arrays are checked against the reference's, bit for bit (values as int64
  bits, so -0.0 is not 0.0, and the null positions), on both sets and on a list of edge tokens
  ("-0", "1e-400", "5e-324", integers beyond 64 bits, 36-digit decimals, whitespace). An array a
  candidate cannot read (a null for numpy, an integer beyond 2**53 for orjson + Arrow) falls back
  to the reference, and that fallback is in its time, as it would be in the compactor.
- CPU time (``time.process_time``: every thread of the process, so that DuckDB's or Arrow's
  threads are counted), per trip; candidates run round-robin, ``--runs`` rounds, median reported
  with the spread of the rounds: the machine is shared, and noise hits every candidate alike.
- The exit status is 1 when the path ``lake.routes`` uses (the C extension) differs from the
  reference on any array: a faster way that changes a value would not count.
"""
from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from typing import Any, Callable

import msgspec
import orjson
import pyarrow as pa

from bench.common import add_results_arg, print_rows, row, run_main, write_result

NAME = "routes"
REFERENCE = "msgspec list[float|None] → pa.array"
DEFAULT_TRIPS, QUICK_TRIPS = 200, 8
DEFAULT_HARD, QUICK_HARD = 40, 2
DEFAULT_RUNS, QUICK_RUNS = 9, 2
EDGE_TOKENS = ["0", "-0", "-0.0", "-0e0", "0e5", "1e-7", "1E+2", "5e-324", "2.4703282292062328e-324", "1e-400",
               "1.7976931348623157e308", "9007199254740993", "18446744073709551616", "-9223372036854775809",
               "123456789012345678901234567890", "0.1000000000000000055511151231257827", "1.5", "-2.25",
               "48.858293", "1743373843.123", "0.30000000000000004", "1e22", "1e23", "123456789e-30", "null"]

_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_NUMBERS = msgspec.json.Decoder(list[float | None])

Route = dict[str, msgspec.Raw]


# ---------------------------------------------------------------------------------------------
# the routes

def gen_routes(n: int) -> list[Route]:
    """bench.gen's trips, split as ``lake.project.split_trip`` splits them."""
    from bench.gen import trip_bodies
    return [_TOP.decode(_TOP.decode(body)["route"]) for _, _, body in trip_bodies(n, teams=4, days=7)]


def _hard_value(rng: random.Random) -> Any:
    k = rng.random()
    if k < 0.01:
        return None
    if k < 0.5:
        return rng.uniform(-180, 180)                       # 15-17 significant digits
    if k < 0.7:
        return rng.uniform(-1, 1) * 10.0 ** rng.randint(-300, 300)
    if k < 0.8:
        return rng.choice([-0.0, 0.0, 1e-7, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308])
    if k < 0.9:
        return rng.randint(-(2 ** 53), 2 ** 53)
    return ("raw", str(rng.randint(2 ** 53, 10 ** 30)))    # integers a double rounds, beyond 64 bits too


def hard_routes(n: int, samples: int = 1996, arrays: int = 13, seed: int = 14) -> list[Route]:
    from lake.routes import SOURCES
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        route = {}
        for src in SOURCES[:arrays]:
            vals = [_hard_value(rng) for _ in range(samples)]
            text = ",".join(v[1] if isinstance(v, tuple) else orjson.dumps(v).decode() for v in vals)
            route[src] = f"[{text}]"
        out.append(_TOP.decode(("{" + ",".join(f'"{k}":{v}' for k, v in route.items()) + "}").encode()))
    return out


def edge_routes() -> list[Route]:
    """Each edge token alone and among others, with and without whitespace."""
    arrays = {f"t{i}": f"[{t}]" for i, t in enumerate(EDGE_TOKENS)}
    arrays["all"] = "[" + ",".join(EDGE_TOKENS) + "]"
    arrays["spaced"] = "[ " + " ,\n\t".join(EDGE_TOKENS) + " ]"
    arrays["empty"] = "[]"
    return [_TOP.decode(("{" + ",".join(f'"{k}":{v}' for k, v in arrays.items()) + "}").encode())]


# ---------------------------------------------------------------------------------------------
# the candidates: raw JSON of one array -> float64 array, or None when it cannot read it

def reference(raw: msgspec.Raw) -> pa.Array:
    return pa.array(_NUMBERS.decode(raw), pa.float64())


def c_extension(raw: msgspec.Raw) -> pa.Array | None:
    from lake import routes
    return routes.native(raw)


def orjson_lists(raw: msgspec.Raw) -> pa.Array | None:
    try:
        return pa.array(orjson.loads(bytes(raw)), pa.float64())
    except (pa.ArrowInvalid, OverflowError, orjson.JSONDecodeError):
        return None


def numpy_fromstring(raw: msgspec.Raw) -> pa.Array | None:
    import numpy as np
    try:
        return pa.array(np.fromstring(bytes(raw)[1:-1], sep=","))
    except ValueError:  # e.g. a null (numpy >= 2.3 raises where older ones only warned)
        return None


def numpy_split(raw: msgspec.Raw) -> pa.Array | None:
    import numpy as np
    try:
        return pa.array(np.array(bytes(raw)[1:-1].split(b","), dtype=np.float64))
    except ValueError:
        return None


def numpy_loadtxt(raw: msgspec.Raw) -> pa.Array | None:
    import numpy as np
    try:
        return pa.array(np.loadtxt(io.BytesIO(bytes(raw)[1:-1]), delimiter=",", dtype=np.float64, ndmin=1))
    except ValueError:
        return None


def _csv_column(text: bytes) -> pa.Array:
    import pyarrow.csv as pcsv
    t = pcsv.read_csv(io.BytesIO(text), read_options=pcsv.ReadOptions(column_names=["v"], use_threads=False),
                      convert_options=pcsv.ConvertOptions(column_types={"v": pa.float64()}, null_values=["null"],
                                                          strings_can_be_null=False))
    return t.column(0).combine_chunks()


def pyarrow_csv(raw: msgspec.Raw) -> pa.Array | None:
    """One CSV column per array: the stripped text with its commas turned into newlines."""
    body = bytes(raw)[1:-1].strip()
    if not body:
        return pa.array([], pa.float64())
    try:
        return _csv_column(body.replace(b",", b"\n"))
    except pa.ArrowInvalid:
        return None


# trip-level candidates: a whole route's arrays at once -> {source: array or None}

def pyarrow_csv_trip(route: Route) -> dict[str, pa.Array | None]:
    """One CSV column for all the arrays of a trip (one reader per trip, not per array), sliced."""
    bodies = {k: bytes(v)[1:-1].strip() for k, v in route.items()}
    counts = {k: (b.count(b",") + 1 if b else 0) for k, b in bodies.items()}
    try:
        col = _csv_column(b"\n".join(b.replace(b",", b"\n") for b in bodies.values() if b))
    except pa.ArrowInvalid:
        return {k: None for k in route}
    out, off = {}, 0
    for k, n in counts.items():
        out[k] = col.slice(off, n)
        off += n
    return out if off == len(col) else {k: None for k in route}


def pyarrow_json_trip(route: Route) -> dict[str, pa.Array | None]:
    """Arrow's JSON reader on the route object (one line, an explicit list<double> schema)."""
    import pyarrow.json as pjson
    line = b"{" + b",".join(orjson.dumps(k) + b":" + bytes(v) for k, v in route.items()) + b"}\n"
    schema = pa.schema([(k, pa.list_(pa.float64())) for k in route])
    try:
        t = pjson.read_json(io.BytesIO(line), read_options=pjson.ReadOptions(use_threads=False),
                            parse_options=pjson.ParseOptions(explicit_schema=schema))
    except pa.ArrowInvalid:
        return {k: None for k in route}
    return {k: t.column(k).combine_chunks().flatten() for k in route}


class DuckTrip:
    """DuckDB's JSON reader from memory: one statement per trip casting each array's text to
    JSON, then DOUBLE[] (a plain VARCHAR cast would take '["1", 2]' and read "-0" as -0.0)."""

    def __init__(self) -> None:
        import duckdb
        self.con = duckdb.connect()
        self.con.execute("SET threads = 1")

    def __call__(self, route: Route) -> dict[str, pa.Array | None]:
        keys = list(route)
        sql = "SELECT " + ", ".join(f"CAST(CAST(${i + 1} AS JSON) AS DOUBLE[]) AS c{i}" for i in range(len(keys)))
        try:
            t = self.con.sql(sql, params=[bytes(route[k]).decode() for k in keys]).to_arrow_table()
        except Exception:  # noqa: BLE001 - DuckDB's conversion errors have no common base
            return {k: None for k in keys}
        return {k: t.column(i).combine_chunks().flatten() for i, k in enumerate(keys)}


class SimdjsonBuffer:
    """pysimdjson's typed buffer of an array (one parser, reused; a null is refused)."""

    def __init__(self) -> None:
        import simdjson
        self.parser = simdjson.Parser()

    def __call__(self, raw: msgspec.Raw) -> pa.Array | None:
        try:
            buf = self.parser.parse(bytes(raw)).as_buffer(of_type="d")
        except (ValueError, TypeError, RuntimeError):  # RuntimeError: an integer beyond 64 bits
            return None
        data = pa.py_buffer(buf)
        return pa.Array.from_buffers(pa.float64(), data.size // 8, [None, data])


def per_array(fn: Callable[[msgspec.Raw], pa.Array | None]) -> Callable[[Route], dict[str, pa.Array | None]]:
    return lambda route: {k: fn(v) for k, v in route.items()}


def candidates() -> dict[str, Callable[[Route], dict[str, pa.Array | None]]]:
    """Name -> way; a library that is not installed is left out (and said so in the notes)."""
    out = {"C extension (lake._routes)": per_array(c_extension), "orjson → pa.array": per_array(orjson_lists)}
    try:
        import numpy  # noqa: F401
        out.update({"numpy fromstring(sep=',')": per_array(numpy_fromstring),
                    "numpy split → array(float64)": per_array(numpy_split),
                    "numpy loadtxt": per_array(numpy_loadtxt)})
    except ImportError:
        pass
    out.update({"pyarrow.csv, a reader per array": per_array(pyarrow_csv),
                "pyarrow.csv, a reader per trip": pyarrow_csv_trip,
                "pyarrow.json, a reader per trip": pyarrow_json_trip,
                "DuckDB JSON cast, a query per trip": DuckTrip()})
    try:
        import simdjson  # noqa: F401
        out["pysimdjson as_buffer('d')"] = per_array(SimdjsonBuffer())
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------------------------------------
# checking and timing

def _bits(a: pa.Array) -> tuple[pa.Array, pa.Array]:
    return a.is_null(), a.fill_null(0.0).view(pa.int64())


def same(a: pa.Array, b: pa.Array) -> bool:
    """Bit for bit: the same nulls, the same doubles (-0.0 is not 0.0)."""
    if len(a) != len(b) or a.type != b.type:
        return False
    (na, va), (nb, vb) = _bits(a), _bits(b)
    return na.equals(nb) and va.equals(vb)


def check(way: Callable[[Route], dict[str, pa.Array | None]], routes_: list[Route]) -> dict[str, Any]:
    """How many arrays a way reads identically, differently, or leaves to the reference; the
    edge tokens it changes."""
    res: dict[str, Any] = {"identical": 0, "different": 0, "fallback": 0, "differs_on": []}
    for route in routes_:
        got = way(route)
        for k, raw in route.items():
            want = reference(raw)
            a = got.get(k)
            if a is None:
                res["fallback"] += 1
            elif same(a, want):
                res["identical"] += 1
            else:
                res["different"] += 1
                if len(res["differs_on"]) < 8:
                    res["differs_on"].append(bytes(raw)[:60].decode())
    return res


def timed(way: Callable[[Route], dict[str, pa.Array | None]], routes_: list[Route]) -> float:
    """CPU µs per trip, arrays the way cannot read going the reference's way."""
    t = time.process_time()
    for route in routes_:
        for k, a in way(route).items():
            if a is None:
                reference(route[k])
    return (time.process_time() - t) * 1e6 / len(routes_)


def measure(ways: dict[str, Callable], routes_: list[Route], runs: int) -> dict[str, list[float]]:
    """``runs`` rounds of every way in turn (one warm-up round first)."""
    for w in ways.values():
        timed(w, routes_[:2])
    out: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(runs):
        for k, w in ways.items():
            out[k].append(timed(w, routes_))
    return out


def _load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--trips", type=int, default=None,
                    help=f"bench.gen trips (default {DEFAULT_TRIPS}; --quick {QUICK_TRIPS})")
    ap.add_argument("--hard-trips", type=int, default=None,
                    help=f"routes of random full-precision doubles (default {DEFAULT_HARD}; --quick {QUICK_HARD})")
    ap.add_argument("--runs", type=int, default=None,
                    help=f"rounds of timing (default {DEFAULT_RUNS}; --quick {QUICK_RUNS})")
    add_results_arg(ap)
    a = ap.parse_args(argv)
    n = a.trips or (QUICK_TRIPS if a.quick else DEFAULT_TRIPS)
    n_hard = a.hard_trips or (QUICK_HARD if a.quick else DEFAULT_HARD)
    runs = a.runs or (QUICK_RUNS if a.quick else DEFAULT_RUNS)
    from lake import routes
    from lake.project import numeric_route
    sets = {"gen": gen_routes(n), "hard": hard_routes(n_hard)}
    edges = edge_routes()
    ways = {REFERENCE: per_array(reference), **candidates()}
    checks = {name: {s: check(w, rs) for s, rs in [*sets.items(), ("edge", edges)]} for name, w in ways.items()}

    # today's hot path for a route of numbers only: the whole route in one msgspec pass, then Arrow;
    # it starts from the route's raw JSON, so the split into arrays (which it saves) is timed too
    whole = {s: [msgspec.Raw(b"{" + b",".join(orjson.dumps(k) + b":" + bytes(v) for k, v in r.items()) + b"}")
                 for r in rs] for s, rs in sets.items()}
    load_before = _load()
    results: dict[str, dict[str, list[float]]] = {}
    for s, rs in sets.items():
        results[s] = measure(ways, rs, runs)
        for label, fn in (("split into arrays (msgspec dict[str, Raw])", lambda r: _TOP.decode(r)),
                          ("msgspec whole route + from_lists (today's one pass)",
                           lambda r: routes.from_lists(numeric_route(r)))):
            results[s][label] = []
            for _ in range(runs):
                t = time.process_time()
                for r in whole[s]:
                    fn(r)
                results[s][label].append((time.process_time() - t) * 1e6 / len(whole[s]))
    load_after = _load()

    rows, notes = [], []
    for s, res in results.items():
        ref = statistics.median(res[REFERENCE])
        for name, xs in res.items():
            if name == REFERENCE:
                continue
            rows.append(row(f"route arrays ({s}): {name}", "µs/trip", REFERENCE, ref, statistics.median(xs),
                            higher_is_better=False))
    for s, res in results.items():
        spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in res.items()}
        notes.append(f"{s}: {len(sets[s])} trips of {sum(len(x) for x in sets[s]) / len(sets[s]):.0f} arrays, "
                     f"CPU µs per trip, median of {runs} rounds (min-max): " + "; ".join(
                         f"{k} {statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})" for k, v in res.items())
                     + f". Widest spread of the rounds {max(spread.values()) * 100:.0f} % of the median.")
    for name, c in checks.items():
        if name == REFERENCE:
            continue
        parts = []
        for s, r in c.items():
            parts.append(f"{s} {r['identical']} identical, {r['different']} different, {r['fallback']} left to msgspec"
                         + (f" (differs on {', '.join(r['differs_on'])})" if r["differs_on"] else ""))
        notes.append(f"{name}: " + "; ".join(parts) + ".")
    missing = [lib for lib in ("numpy", "simdjson") if not any(lib in k.lower() for k in ways)]
    if missing:
        notes.append(f"not installed, not measured: {', '.join(missing)}.")
    notes.append(f"load average {load_before:.2f} before, {load_after:.2f} after (2 cores, shared).")
    notes.append(f"lake.routes reads arrays with the C extension: {routes.NATIVE}.")
    print_rows(rows)
    for x in notes:
        print("-", x)
    write_result(NAME, rows, {"trips": n, "hard_trips": n_hard, "runs": runs, "quick": a.quick}, notes,
                 results_dir=a.results_dir, extra={"runs_us": results, "checks": checks})
    ours = checks["C extension (lake._routes)"]
    if not routes.NATIVE or any(r["different"] for r in ours.values()):
        print("the C extension is not in use, or changed a value", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)

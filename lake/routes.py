"""Route tables → ``trip_samples``.

A trip's route is a handful of parallel arrays of ~2,000 numbers. Each array is read from its
raw JSON straight into a buffer of doubles by ``lake._routes``, a small C extension that
``pip install`` builds (setuptools ``ext-modules`` in pyproject.toml), and wrapped as a float64
Arrow array without a copy: no number ever becomes a Python float. An array that is anything
else (a numeric string, a word, a nested value, a number beyond a double) goes the way every
array went before: msgspec into a list of floats, then Arrow, and, when msgspec refuses it, value
by value, so that numeric strings are numbers and the reason of a FAILED trip names the array
and the index. Both ways give the same doubles, bit for bit (tests/test_routes_decode.py).
Without the extension (no compiler at install, or ``PUSHLAKE_NATIVE_ROUTES=0`` for an A/B
measurement) everything goes the msgspec way, ~3.7x the CPU: bench/README.md has the numbers.
A route that cannot be read is reported per trip (its trip becomes a FAILED item).
"""
from __future__ import annotations

import math
import os

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from . import shm
from .jsonvalues import Exact, dumps, loads
from .schema import ROUTE_SOURCES, SAMPLE_FIELDS, SAMPLE_TS_FIELD, SCHEMAS

try:
    from . import _routes
except ImportError:  # installed without a C compiler: the msgspec way only
    _routes = None

SOURCES = ROUTE_SOURCES
COLUMN_OF = {SAMPLE_TS_FIELD: "ts", **{src: col for col, src in SAMPLE_FIELDS}}
_SAMPLES = SCHEMAS["trip_samples"]
_NUMBERS = msgspec.json.Decoder(list[float | None])
NATIVE = _routes is not None and os.environ.get("PUSHLAKE_NATIVE_ROUTES", "1") != "0"
"""Whether route arrays are read by the C extension (``lake._routes``)."""


class RouteError(ValueError):
    pass


def decode(arrays: dict[str, msgspec.Raw]) -> tuple[int, dict[str, pa.Array]]:
    """(number of samples, source -> float64 array) of one route, from its arrays' raw JSON
    (arrays that are null or absent are left out). Raises RouteError naming the first array
    that is not an array of numbers (and the index of the value that is not one), or whose
    length differs from the others."""
    out: dict[str, pa.Array] = {}
    for src in SOURCES:
        raw = arrays.get(src)
        if raw is None or (len(raw) == 4 and bytes(raw) == b"null"):
            continue
        a = native(raw) if NATIVE else None
        out[src] = a if a is not None else _decoded(src, raw)
    return _checked(out)


def native(raw: bytes | msgspec.Raw) -> pa.Array | None:
    """A JSON array of numbers and nulls as a float64 array, by the C extension; None for
    anything else, and when the extension is not built."""
    got = _routes.parse(raw) if _routes is not None else None
    if got is None:
        return None
    values, validity, nulls = got
    return pa.Array.from_buffers(pa.float64(), len(values) // 8,
                                 [None if validity is None else pa.py_buffer(validity), pa.py_buffer(values)], nulls)


def _decoded(src: str, raw: msgspec.Raw) -> pa.Array:
    """An array the C extension did not take: msgspec's list of floats, or value by value."""
    try:
        return pa.array(_NUMBERS.decode(raw), pa.float64())
    except msgspec.ValidationError as e:
        refused = e
    try:
        values = loads(raw)  # numbers beyond a double or 64 bits come back as Exact
    except (ValueError, RecursionError):
        raise RouteError(f"route.{src}: expected an array of numbers ({refused})") from None
    if not isinstance(values, list):
        raise RouteError(f"route.{src}: expected an array of numbers ({refused})")
    return pa.array([_number(src, i, v) for i, v in enumerate(values)], pa.float64())


def _number(src: str, i: int, v: object) -> float | None:
    """One value of a route array, read as the trip's other number fields are (a numeric string
    is a number, README "Choices"); booleans, words and anything nested are not numbers."""
    if v is None or isinstance(v, float):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            v = Exact(str(v), None)
    elif isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            pass
        else:
            if math.isfinite(f) or v.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
                return f
            v = Exact(v, None)
    if isinstance(v, Exact):
        if v.value is None:
            raise RouteError(f"route.{src}: number beyond the range of a 64-bit float at $[{i}]")
        return v.value
    shown = dumps(v)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise RouteError(f"route.{src}: expected an array of numbers, got {shown} at $[{i}]")


def from_lists(arrays: dict[str, list | None]) -> tuple[int, dict[str, pa.Array]]:
    """``decode`` for a route already decoded into lists of numbers (or nulls)."""
    return _checked({src: _floats(src, arrays[src]) for src in SOURCES if arrays.get(src) is not None})


def _floats(src: str, values: list) -> pa.Array:
    try:
        return pa.array(values, pa.float64())
    except (pa.ArrowInvalid, OverflowError):
        pass  # an integer beyond 64 bits, which Arrow will not take as a float directly
    out = []
    for i, v in enumerate(values):
        try:
            out.append(None if v is None else float(v))
        except OverflowError:
            raise RouteError(f"route.{src}: number beyond the range of a 64-bit float at $[{i}]") from None
    return pa.array(out, pa.float64())


def _checked(out: dict[str, pa.Array]) -> tuple[int, dict[str, pa.Array]]:
    n = max((len(a) for a in out.values()), default=0)
    for src, a in out.items():
        if len(a) != n:
            other = next(s for s, b in out.items() if len(b) == n)
            raise RouteError(f"route.{src}: has {len(a)} samples, route.{other} has {n}")
    return n, out


class Routes:
    """The decoded routes of a batch, by route id (the record's index in the batch).

    Routes are gathered into chunks holding one array per source for all their routes (a
    chunk is what one projection process sends back, as one Arrow IPC stream), and a route is a
    slice of its chunk."""

    def __init__(self) -> None:
        self._chunks: list[dict[str, pa.Array]] = []
        self._where: dict[int, tuple[int, int, int]] = {}  # id -> (chunk, offset, samples)

    @classmethod
    def chunk(cls, decoded: list[tuple[int, int, dict[str, pa.Array]]]) -> "Routes":
        """Routes as ``decode`` returns them, (id, samples, arrays), gathered into one chunk."""
        out = cls()
        if decoded:
            offset = 0
            for rid, n, _ in decoded:
                out._where[rid] = (0, offset, n)
                offset += n
            out._chunks.append({src: pa.concat_arrays([a[src] if src in a else pa.nulls(n, pa.float64())
                                                       for _, n, a in decoded]) for src in SOURCES})
        return out

    def __reduce__(self):
        # how a projection process sends its chunk back: Arrow's IPC format is ~15x faster to
        # produce than pickling each array (1.8 ms instead of 26 ms for 3 MB of bodies' routes),
        # in a shared-memory file when it can (``share_through``), else as bytes in the pipe
        return _restore, (self._where, [_shared(c) or _ipc(c) for c in self._chunks])

    def extend(self, other: "Routes") -> None:
        """Take the routes of another part of the batch, e.g. from a projection process."""
        base = len(self._chunks)
        self._chunks.extend(other._chunks)
        self._where.update((rid, (base + c, off, n)) for rid, (c, off, n) in other._where.items())

    def count(self, rid: int) -> int:
        return self._where[rid][2]

    def samples(self, rids: list[int], common: dict[str, pa.Array]) -> pa.Table:
        """The sample rows of these routes, in order; ``common`` holds one value per route for
        the other columns (itin_id, team_id, date, received_at, log_part, log_offset)."""
        locs = [self._where[r] for r in rids]
        n = pa.array([m for _, _, m in locs], pa.int64())
        total = sum(m for _, _, m in locs)
        if total == 0:
            return _SAMPLES.empty_table()
        parent = _parents(n, total)
        cols = {COLUMN_OF[src]: pa.concat_arrays([self._chunks[c][src].slice(off, m) for c, off, m in locs])
                for src in SOURCES}
        starts = pc.subtract(pc.cumulative_sum(n), n)
        position = pc.subtract(pc.cumulative_sum(pa.nulls(total, pa.int64()).fill_null(1)), 1)
        seq = pc.subtract(position, pc.take(starts, parent)).cast(pa.int32())
        out = []
        for f in _SAMPLES:
            if f.name == "ts":
                out.append(pc.cast(pc.multiply(cols["ts"], pa.scalar(1e6)), pa.int64(), safe=False).cast(f.type))
            elif f.name == "seq":
                out.append(seq)
            elif f.name in cols:
                out.append(cols[f.name])
            else:
                out.append(pc.take(common[f.name], parent).cast(f.type))
        return pa.Table.from_arrays(out, schema=_SAMPLES)


_share: tuple[str, int] | None = None  # (tmpfs directory, compactor pid) in a projection process


def share_through(directory: str | None, owner: int) -> None:
    """In a projection process: send route chunks to compactor ``owner`` as files in
    ``directory`` (``lake.shm``; None: through the pipe)."""
    global _share
    _share = None if directory is None or not os.path.isdir(directory) else (directory, owner)


def _ipc(chunk: dict[str, pa.Array]) -> bytes:
    batch = pa.RecordBatch.from_pydict(chunk)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _shared(chunk: dict[str, pa.Array]) -> str | None:
    """The chunk as an Arrow IPC file in shared memory (``lake.shm``); its path, or None when
    there is no such directory, or it cannot take the file (then the pipe)."""
    if _share is None:
        return None
    path = None
    try:
        path = shm.new_file(_share[0], "routes", _share[1])
        batch = pa.RecordBatch.from_pydict(chunk)
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, batch.schema) as w:
            w.write_batch(batch)
    except OSError:  # full, or not usable: the pipe
        if path is not None:
            shm.unlink(path)
        return None
    return path


def _restore(where: dict[int, tuple[int, int, int]], chunks: list) -> Routes:
    out = Routes()
    out._where = where
    for c in chunks:
        if isinstance(c, str):
            try:
                batch = pa.ipc.open_file(pa.memory_map(c)).get_batch(0)  # no copy: pages of the file
            finally:
                shm.unlink(c)
        else:
            batch = pa.ipc.open_stream(c).read_next_batch()
        out._chunks.append(dict(zip(batch.schema.names, batch.columns)))
    return out


def _parents(n: pa.Array, total: int) -> pa.Array:
    """For each sample, the index of its route (a run-length expansion of ``n``)."""
    offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(n).cast(pa.int32())])
    return pc.list_parent_indices(pa.ListArray.from_arrays(offsets, pa.nulls(total, pa.int8())))

"""Route tables → ``trip_samples``, vectorised.

A trip's route is a handful of parallel arrays of ~2,000 numbers. Building Python floats for
them (a JSON parse) costs ~1 ms per 170 KB trip; instead the compactor hands the raw route JSON of
a whole batch to Arrow's JSON reader (C++, explicit schema) and unnests the lists with Arrow
compute, so no Python code touches a sample value. A batch that does not parse is bisected to
find the routes that fail, which are reported per trip (they become FAILED items).
"""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from .schema import ROUTE_SOURCES, SAMPLE_FIELDS, SAMPLE_TS_FIELD, SCHEMAS

SOURCES = ROUTE_SOURCES
COLUMN_OF = {SAMPLE_TS_FIELD: "ts", **{src: col for col, src in SAMPLE_FIELDS}}
_STRUCT = pa.struct([(src, pa.list_(pa.float64())) for src in SOURCES])
_PARSE = pj.ParseOptions(explicit_schema=pa.schema([("i", pa.int64()), ("r", _STRUCT)]),
                         unexpected_field_behavior="ignore")
_SAMPLES = SCHEMAS["trip_samples"]


class Routes:
    """The parsed routes of a batch: ``rows[id]`` is the row of route ``id`` in ``table``."""

    def __init__(self, table: pa.StructArray, ids: list[int]):
        self.table = table
        self.rows = {i: k for k, i in enumerate(ids)}

    def count(self, rid: int) -> int:
        return self._counts[self.rows[rid]]

    def check(self) -> dict[int, str]:
        """Routes whose arrays differ in length: id -> reason."""
        bad: dict[int, str] = {}
        lengths = {src: pc.list_value_length(self.table.field(src)).to_pylist() for src in SOURCES}
        counts = []
        for rid, k in self.rows.items():
            present = {src: lengths[src][k] for src in SOURCES if lengths[src][k] is not None}
            n = max(present.values(), default=0)
            counts.append(n)
            short = [src for src, m in present.items() if m != n]
            if short:
                other = next(src for src, m in present.items() if m == n)
                bad[rid] = (f"route.{short[0]}: has {present[short[0]]} samples, route.{other} has {n}")
        self._counts = counts
        return bad

    def samples(self, rids: list[int], common: dict[str, pa.Array]) -> pa.Table:
        """The sample rows of these routes, in order; ``common`` holds one value per route for
        the other columns (itin_id, team_id, date, received_at, log_part, log_offset)."""
        rows = pa.array([self.rows[r] for r in rids], pa.int64())
        sub = self.table.take(rows)
        n = pa.array([self._counts[self.rows[r]] for r in rids], pa.int64())
        total = pc.sum(n).as_py() or 0
        if total == 0:
            return _SAMPLES.empty_table()
        parent = _parents(n, total)
        cols: dict[str, pa.Array] = {}
        for src in SOURCES:
            lst = sub.field(src)
            lens = pc.list_value_length(lst).fill_null(0)
            if pc.all(pc.equal(lens, n)).as_py():
                values = pc.list_flatten(lst)
            else:  # some routes lack this array: nulls for their samples
                parts = [lst[k].values if lst[k].is_valid else pa.nulls(m, pa.float64())
                         for k, m in enumerate(n.to_pylist())]
                values = pa.concat_arrays(parts)
            cols[COLUMN_OF[src]] = values
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


def _parents(n: pa.Array, total: int) -> pa.Array:
    """For each sample, the index of its route (a run-length expansion of ``n``)."""
    offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(n).cast(pa.int32())])
    return pc.list_parent_indices(pa.ListArray.from_arrays(offsets, pa.nulls(total, pa.int8())))


def parse(items: list[tuple[int, bytes]]) -> tuple[Routes, dict[int, str]]:
    """Parse raw route objects; return the routes that parsed and, for the others, the reason."""
    errors: dict[int, str] = {}
    chunks: list[pa.StructArray] = []
    ids: list[int] = []
    _parse(items, chunks, ids, errors)
    table = pa.concat_arrays(chunks) if chunks else pa.array([], _STRUCT)
    return Routes(table, ids), errors


def _parse(items: list[tuple[int, bytes]], chunks: list, ids: list[int], errors: dict[int, str]) -> None:
    if not items:
        return
    buf = b"".join(b'{"i":%d,"r":%s}\n' % (i, raw) for i, raw in items)
    # blocks of a few MB are parsed in parallel; every line must fit in one
    block = max(4 << 20, 2 * max(len(raw) for _, raw in items) + 64)
    try:
        t = pj.read_json(io.BytesIO(buf), read_options=pj.ReadOptions(block_size=block), parse_options=_PARSE)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        if len(items) == 1:
            msg = str(e).replace("JSON parse error: ", "")
            errors[items[0][0]] = f"route: expected arrays of numbers ({msg.split(' in row')[0]})"
            return
        half = len(items) // 2
        _parse(items[:half], chunks, ids, errors)
        _parse(items[half:], chunks, ids, errors)
        return
    got = t.column("i").to_pylist()
    chunks.append(pa.concat_arrays(t.column("r").chunks) if t.num_rows else pa.array([], _STRUCT))
    ids.extend(got)

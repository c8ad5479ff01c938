"""Projection of one log record into lake rows.

A record either projects completely or raises ``ProjectionError`` with a reason naming the field,
and is then quarantined as FAILED by the compactor. Parsing is permissive about what is absent
(missing blocks give nulls) and strict about what is wrong (a word where a number belongs).
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from ingest.keys import body_sha256
from ingest.record import Kind, Record

from . import routes
from .jsonvalues import Exact, dumps, loads
from .schema import (CRASH_FIELDS, DELETION_FIELDS, DIAGNOSIS_FIELDS, EVENT_ARRAYS, EVENT_FIELDS, ROUTE_SOURCES,
                     TRIP_FIELDS, TRIP_TABLES)

UTC = dt.timezone.utc
TABLES_OF_KIND = {Kind.TRIP: TRIP_TABLES, Kind.EVENT: ("trip_deletions",),
                  Kind.CRASH: ("crashes",), Kind.DIAGNOSIS: ("diagnoses",)}


class ProjectionError(ValueError):
    pass


class SampleRows(NamedTuple):
    """A trip's samples: its route, still in its batch's ``lake.routes.Routes`` (by id), and the
    values of the other ``trip_samples`` columns, the same for every sample of the trip."""
    route: int
    itin_id: str
    team_id: str
    date: dt.date
    received_at: dt.datetime
    log_part: str
    log_offset: int

    COMMON = ("itin_id", "team_id", "date", "received_at", "log_part", "log_offset")


@dataclass
class Projected:
    date: dt.date
    rows: dict[str, list[dict]]               # table -> row dicts
    samples: SampleRows | None = None         # a trip's samples, if its route has any


def _num(v: Any, path: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int):
        try:
            return float(v)
        except OverflowError:
            v = Exact(str(v), None)
    if isinstance(v, float):
        return v
    if isinstance(v, str):
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
            raise ProjectionError(f"{path}: {_show(v)} is beyond the range of a 64-bit float")
        return v.value
    raise ProjectionError(f"{path}: expected a number, got {_show(v)}")


_I64 = (-(1 << 63), (1 << 63) - 1)


def _is_int_text(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True


def _int(v: Any, path: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        i = v  # not through a float: 2**53 + 1 stays itself
    elif isinstance(v, str) and len(v) < 4000 and _is_int_text(v):
        i = int(v)
    else:
        f = _num(v, path)
        if f != f or f in (float("inf"), float("-inf")) or f != int(f):
            raise ProjectionError(f"{path}: expected an integer, got {_show(v)}")
        i = int(f)
    if not _I64[0] <= i <= _I64[1]:
        raise ProjectionError(f"{path}: {_show(v)} is beyond the range of a 64-bit integer")
    return i


def _bool(v: Any, path: str) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    if v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ProjectionError(f"{path}: expected a boolean, got {_show(v)}")


def _str(v: Any, path: str) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, Exact):
        return v.text
    raise ProjectionError(f"{path}: expected a string, got {_show(v)}")


def parse_ts(v: Any, path: str) -> dt.datetime | None:
    """DriveQuant dates (``yyyy-MM-dd'T'HH:mm:ss.SSSZ``), other ISO forms, or Unix seconds."""
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            return dt.datetime.fromtimestamp(v, UTC)
        except (OverflowError, OSError, ValueError):
            pass
    elif isinstance(v, str):
        try:
            t = dt.datetime.fromisoformat(v)
            return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
        except (ValueError, OverflowError):  # OverflowError: year 1 moved west of UTC
            pass
    raise ProjectionError(f"{path}: expected a date, got {_show(v)}")


CONVERT = {"str": _str, "f64": _num, "i64": _int, "bool": _bool, "ts": parse_ts}


def _show(v: Any) -> str:
    s = dumps(v) if not isinstance(v, bytes) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _take(body: dict, path: tuple[str, ...]) -> Any:
    """Pop the value at path (None if absent); a parent that is not an object is an error."""
    node = body
    for i, k in enumerate(path[:-1]):
        node = node.get(k)
        if node is None:
            return None
        if not isinstance(node, dict):
            raise ProjectionError(f"{'.'.join(path[:i + 1])}: expected an object, got {_show(node)}")
    return node.pop(path[-1], None)


def _prune(body: dict) -> None:
    for k in [k for k, v in body.items() if isinstance(v, dict)]:
        _prune(body[k])
        if not body[k]:
            del body[k]


def _map(body: dict, spec, row: dict, prefix: str = "") -> None:
    for col, path, typ in spec:
        row[col] = CONVERT[typ](_take(body, path), prefix + ".".join(path))


def _extra(body: dict) -> str:
    _prune(body)
    return dumps(body)


def _common(r: Record, date: dt.date) -> dict:
    return {"team_id": r.team, "date": date, "received_at": dt.datetime.fromtimestamp(r.received_us / 1e6, UTC),
            "log_part": None, "log_offset": r.offset}


def _load(r: Record) -> dict:
    try:
        body = loads(r.body)
    except (ValueError, RecursionError) as e:
        raise ProjectionError(f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ProjectionError("body is not a JSON object")
    return body


def received_date(r: Record) -> dt.date:
    return dt.datetime.fromtimestamp(r.received_us / 1e6, UTC).date()


def project(r: Record, part: str) -> Projected:
    """Crashes, diagnoses and deletions (trips go through ``split_trip`` and ``project_trip``)."""
    fn = {Kind.EVENT: _deletion, Kind.CRASH: _crash, Kind.DIAGNOSIS: _diagnosis}[r.kind]
    p = fn(r, _load(r))
    for rows in p.rows.values():
        for row in rows:
            row["log_part"] = part
    return p


_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ROUTE_SOURCES = set(ROUTE_SOURCES)
_ROUTE_OF_NUMBERS = msgspec.json.Decoder(dict[str, list[int | float | None] | None])


def numeric_route(route: bytes | msgspec.Raw) -> dict[str, list | None] | None:
    """The usual route, an object whose every member is an array of numbers and nulls (or null),
    read in one pass, not skipped first; None for any other route, which ``split_trip`` reads
    member by member to name what is wrong and where."""
    try:
        return _ROUTE_OF_NUMBERS.decode(route)
    except msgspec.ValidationError:
        return None


def split_trip(body: bytes) -> tuple[dict, tuple[int, dict] | None, str | None]:
    """The trip without its route, as Python objects, and its route decoded by ``lake.routes``
    as (number of samples, source -> Arrow array): the route's thousands of numbers never
    become Python objects that outlive the call. A route that cannot be read is reported here
    (third value), per trip; the caller reports it after the trip's other fields, so a reason
    names the first problem in reading order."""
    try:
        top = _TOP.decode(body)
    except msgspec.ValidationError:
        raise ProjectionError("body is not a JSON object") from None
    except msgspec.DecodeError as e:
        raise ProjectionError(f"body is not JSON: {e}") from None
    route = top.pop("route", None)
    doc = {k: loads(v) for k, v in top.items()}
    if route is None or bytes(route) == b"null":
        return doc, None, None
    # None: something else in it, the path below names what and where; with the C extension built,
    # the path below reads each array straight into doubles, faster than this one pass
    arrays = None if routes.NATIVE else numeric_route(route)
    if arrays is not None:
        extra = {k: v for k, v in arrays.items() if k not in _ROUTE_SOURCES}
        if extra:
            doc["route"] = extra
        try:
            return doc, routes.from_lists(arrays), None
        except routes.RouteError as e:
            return doc, None, str(e)
    try:
        parts = _TOP.decode(route)
    except msgspec.ValidationError:
        return doc, None, f"route: expected an object of arrays, got {_show(loads(route))}"
    extra = {}
    problem = None
    for k, v in parts.items():
        if k in _ROUTE_SOURCES:
            if problem is None and bytes(memoryview(v)[:1]) not in (b"[", b"n"):
                problem = f"route.{k}: expected an array of numbers, got {_show(loads(v))}"
        else:
            extra[k] = loads(v)  # arrays without a column (e.g. stoppingStateRoute) stay in extra
    if extra:
        doc["route"] = extra
    if problem:
        return doc, None, problem
    try:
        return doc, routes.decode(parts), None
    except routes.RouteError as e:
        return doc, None, str(e)


class SplitTrip(NamedTuple):
    """A trip split from its route: its fields as Python objects, whether its route (in the
    batch's ``Routes``) has samples, what is wrong with the route if anything, its body's hash."""
    doc: dict
    has_route: bool
    route_problem: str | None
    sha256: str


def split_trips(items: list[tuple[int, bytes]]) -> tuple[list[tuple[int, SplitTrip | ProjectionError]], routes.Routes]:
    """``split_trip`` over many bodies, by id: (id, ``SplitTrip`` or the error) and their
    routes, sealed in one chunk. The unit of work of the compactor's
    projection processes (module-level, so it pickles); the hash is taken here too, so that the
    compactor can let go of a body once it is split."""
    out: list[tuple[int, SplitTrip | ProjectionError]] = []
    decoded: list[tuple[int, int, dict]] = []
    for k, body in items:
        try:
            doc, route, problem = split_trip(body)
        except ProjectionError as e:
            out.append((k, e))
            continue
        except Exception as e:  # noqa: BLE001 - one body's surprise is that body's FAILED reason
            out.append((k, ProjectionError(f"{type(e).__name__}: {e}")))
            continue
        out.append((k, SplitTrip(doc, route is not None, problem, body_sha256(body))))
        if route is not None:
            decoded.append((k, *route))
    return out, routes.Routes.chunk(decoded)


def project_trip(r: Record, part: str, body: dict, n_samples: int, route: int | None = None) -> Projected:
    """The trips row, the trip_events rows and, for a trip with a ``route`` (its id in the batch's
    ``lake.routes.Routes``, holding ``n_samples`` samples), its ``SampleRows``."""
    body = dict(body)
    itin = body.pop("itinId", None)
    events_src = {name: body.pop(name, None) for name in EVENT_ARRAYS}
    top_end = body.get("endDate")
    row: dict = {"itin_id": itin}
    _map(body, TRIP_FIELDS, row)
    if row["end_date"] is None and top_end is not None:
        row["end_date"] = parse_ts(body.pop("endDate"), "endDate")
    elif isinstance(top_end, str) and row["end_date"] is not None and parse_ts(top_end, "endDate") == row["end_date"]:
        body.pop("endDate")  # same value as itineraryData.endDate: already in a column
    start = row["start_date"] or row["end_date"]
    date = start.date() if start else received_date(r)
    common = _common(r, date)
    common["log_part"] = part
    row["n_samples"] = n_samples
    events = _events(itin, events_src, common)
    row["extra"] = _extra(body)
    row.update(common)
    samples = None if route is None else SampleRows(route, itin, r.team, date, common["received_at"], part, r.offset)
    return Projected(date, {"trips": [row], "trip_events": events}, samples)


def _events(itin: str, src: dict, common: dict) -> list[dict]:
    rows = []
    for name, kind in EVENT_ARRAYS.items():
        arr = src.get(name)
        if arr is None:
            continue
        if not isinstance(arr, list):
            raise ProjectionError(f"{name}: expected an array, got {_show(arr)}")
        for i, ev in enumerate(arr):
            if not isinstance(ev, dict):
                raise ProjectionError(f"{name}[{i}]: expected an object, got {_show(ev)}")
            row = {"itin_id": itin, "event_type": kind, "seq": i}
            _map(ev, EVENT_FIELDS, row, f"{name}[{i}].")
            row["extra"] = _extra(ev)
            row.update(common)
            rows.append(row)
    return rows


def _crash(r: Record, body: dict) -> Projected:
    row = {"crash_id": body.pop("crashId", None)}
    _map(body, CRASH_FIELDS, row)
    date = row["crash_date"].date() if row["crash_date"] else received_date(r)
    row["extra"] = _extra(body)
    row.update(_common(r, date))
    return Projected(date, {"crashes": [row]})


def _diagnosis(r: Record, body: dict) -> Projected:
    events = body.pop("events", None)
    if events is not None and not isinstance(events, list):
        raise ProjectionError(f"events: expected an array, got {_show(events)}")
    row = {"user_id": _str(body.pop("userId", None), "userId"), "body_sha256": body_sha256(r.body)}
    _map(body, DIAGNOSIS_FIELDS, row)
    row["n_events"] = len(events or [])
    row["events"] = dumps(events or [])
    row["extra"] = _extra(body)
    date = received_date(r)
    row.update(_common(r, date))
    return Projected(date, {"diagnoses": [row]})


def _deletion(r: Record, body: dict) -> Projected:
    row = {"itin_id": body.pop("itinId", None)}
    _map(body, DELETION_FIELDS, row)
    row["extra"] = _extra(body)
    date = received_date(r)
    row.update(_common(r, date))
    return Projected(date, {"trip_deletions": [row]})


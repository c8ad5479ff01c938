"""Synthetic push bodies for the benchmarks, derived from the test fixtures.

Trips are the 33-minute fixture (or the 10-second one with ``small=True``) with their own itinId,
driver, team and start date, route timestamps shifted to match, and a few values varied so that
files do not compress unrealistically well. Deterministic for a given seed.
"""
from __future__ import annotations

import copy
import datetime as dt
import random
from pathlib import Path
from typing import Iterator

import orjson

from bench.common import FIXTURES

BASE_DAY = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}+0000"


def template(small: bool = False) -> dict:
    return orjson.loads((FIXTURES / ("trip_small.json" if small else "trip_33min.json")).read_bytes())


def trip_bodies(n: int, teams: int = 1, days: int = 30, drivers: int = 500, small: bool = False,
                seed: int = 1, start: int = 0) -> Iterator[tuple[str, str, bytes]]:
    """(team, itinId, body) for trips start..start+n-1, spread over ``days`` days."""
    base = template(small)
    rng = random.Random(seed)
    route = base.get("route") or {}
    t0 = route.get("gpsDate", [0])[0]
    for i in range(start, start + n):
        t = copy.copy(base)
        itin = f"{i:024x}"
        begin = BASE_DAY + dt.timedelta(days=i % days, seconds=rng.randrange(6 * 3600, 22 * 3600))
        dur = (base.get("itineraryStatistics") or {}).get("tripDuration", 10.0)
        t["itinId"] = itin
        t["userId"] = f"driver-{i % drivers:05d}"
        t["vehicleId"] = f"veh-{i % drivers:05d}"
        t["itineraryData"] = {**base["itineraryData"], "startDate": _fmt(begin),
                              "endDate": _fmt(begin + dt.timedelta(seconds=dur))}
        t["endDate"] = t["itineraryData"]["endDate"]
        t["itineraryStatistics"] = {**base["itineraryStatistics"],
                                    "distance": round(base["itineraryStatistics"]["distance"] * rng.uniform(0.5, 1.5), 1)}
        t["ecoDriving"] = {**base["ecoDriving"], "score": round(rng.uniform(4, 10), 1)}
        t["safety"] = {**base["safety"], "safetyScore": round(rng.uniform(4, 10), 1)}
        if route:
            shift = begin.timestamp() - t0
            t["route"] = {**route, "gpsDate": [x + shift for x in route["gpsDate"]]}
        yield f"team-{i % teams:03d}", itin, orjson.dumps(t)


def deletion_body(itin: str) -> bytes:
    return orjson.dumps({"itinId": itin, "event": "TRIP_DELETION", "date": "2025-02-01T09:12:47.000+0000"})


def write_log(data_dir: Path, bodies: Iterator[tuple[str, str, bytes]], batch: int = 500,
              received_us: int | None = None) -> int:
    """Append trips straight to log partition p0 (what the receiver would have written)."""
    from ingest.log import LogWriter
    from ingest.record import Kind
    w = LogWriter(data_dir, 0)
    now = received_us or int(dt.datetime.now(dt.timezone.utc).timestamp() * 1e6)
    n = 0
    items = []
    for team, itin, body in bodies:
        items.append((Kind.TRIP, now + n, team, itin, body))
        n += 1
        if len(items) >= batch:
            w.append(items)
            items = []
    if items:
        w.append(items)
    w.close()
    return n

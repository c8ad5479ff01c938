"""The fate of every record of a batch, decided as if each record came alone.

``plan`` is a pure function of the records (in order of arrival), what their projection gives,
and what the catalog knows of their keys (``Known``, gathered by ``look_up``): so the lake and the
push counts do not depend on where batch boundaries fall, and the rules can be tested one by one
(tests/test_plan.py). For each push of a key, in order:

- older than (or as old as) the key's version in the lake: **stale** (a duplicate, or on a retry
  a FAILED item that is now superseded);
- a trip pushed after its deletion: **discarded**, never visible;
- its projection fails: **FAILED** with the reason; the previous version stays;
- otherwise it becomes the key's current version (counted as a duplicate when its body is the
  same as the version's); the last one is **stored**, unless its trip is deleted.

A deletion becomes a tombstone, and the rows of the trip it deletes are removed wherever they are:
at once when the step's copy-on-write budget allows, else recorded as position deletes that
readers skip until a later rewrite (``lake.writer``, ``lake.maintenance.apply_deletes``).

The commit records the version the plan saw of every key it changes (``Commit.previous``), so that
a commit racing another node's on the same key conflicts instead of leaving two rows.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol

from ingest.keys import deleted_itin
from ingest.record import Kind, Record
from pushlake import failpoints

from .catalog import (STAT_FIELDS, Commit, FailedRow, Key, LogRef, Order, ResolvedRow, StatKey, TombstoneRow,
                      TripRef, Version, VersionRow)
from .project import TABLES_OF_KIND, Projected, ProjectionError, SampleRows, received_date
from .schema import TRIP_TABLES


@dataclass
class StepStats:
    records: int = 0
    stored: int = 0
    stale: int = 0
    deleted: int = 0
    failed: int = 0
    files_written: int = 0
    files_rewritten: int = 0
    seconds: float = 0.0
    links_seconds: float = 0.0   # of which: the hive tree's links after the commit

    def add(self, o: "StepStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(o, k))


class Buffer(NamedTuple):
    """Where a projected record's rows go: one new file per table, team and date."""
    tbl: str
    team: str
    date: str


class Partition(NamedTuple):
    """Files of these tables in one partition, where copy-on-write looks for removed keys."""
    tables: tuple[str, ...]
    team: str
    date: str


@dataclass
class Known:
    """What the catalog knows of a batch's keys."""
    versions: dict[Key, Version] = field(default_factory=dict)     # the version in the lake
    deleted: dict[TripRef, Order] = field(default_factory=dict)    # the first tombstone of a trip


class Lookups(Protocol):
    def versions_of(self, kind: int, team: str, keys: list[str]) -> dict[str, Version]: ...
    def deleted_among(self, team: str, itins: list[str]) -> dict[str, Order]: ...


@dataclass
class Plan:
    commit: Commit
    stats: StepStats
    buffers: dict[Buffer, list[list[dict]] | list[SampleRows]] = field(default_factory=lambda: defaultdict(list))
    remove_keys: dict[Partition, set[str]] = field(default_factory=lambda: defaultdict(set))
    # deleted trips: their rows are found (position deletes) and rewritten within a budget
    # (``lake.writer``); readers skip them meanwhile
    delete_keys: dict[Partition, set[str]] = field(default_factory=lambda: defaultdict(set))


# what projects a record: (part, record, index in the batch) -> its rows, or raises
Projector = Callable[[str, Record, int], Projected]
# a record's body hash, by (record, index in the batch)
Hasher = Callable[[Record, int], str]


def look_up(catalog: Lookups, records: list[tuple[str, Record]]) -> Known:
    """The versions of every key of the batch, and of every trip it deletes; the tombstones of
    its trips."""
    groups: dict[tuple[int, str], set[str]] = defaultdict(set)
    for _, r in records:
        groups[(r.kind, r.team)].add(r.key)
        if r.kind == Kind.EVENT and (itin := deleted_itin(r.key)) is not None:
            groups[(Kind.TRIP, r.team)].add(itin)
    known = Known()
    for (kind, team), keys in groups.items():
        ordered = sorted(keys)
        for k, v in catalog.versions_of(kind, team, ordered).items():
            known.versions[Key(kind, team, k)] = v
        if kind == Kind.TRIP:
            for itin, order in catalog.deleted_among(team, ordered).items():
                known.deleted[TripRef(team, itin)] = order
    return known


def count(c: Commit, r: Record, what: str, kind: int | None = None) -> None:
    """One more push in the counters of its receive day, team and kind (push reports)."""
    day = received_date(r).isoformat()
    counts = c.stats.setdefault(StatKey(day, r.team, r.kind if kind is None else kind), [0] * len(STAT_FIELDS))
    counts[STAT_FIELDS.index(what)] += 1


def plan(records: list[tuple[str, Record]], project: Projector, sha256: Hasher, known: Known, commit: Commit,
         retry: bool = False, poison: dict[tuple[str, int], str] | None = None) -> Plan:
    """Decide every record of a batch (sorted by arrival). ``retry``: the records are FAILED items
    re-projected by a task (not counted again as received). ``poison``: records, by (part, offset),
    whose projection is to fail with the reason given (see ``lake.isolation``)."""
    poison = poison or {}
    p = Plan(commit, StepStats(records=len(records)))
    c, st = p.commit, p.stats
    cands: dict[Key, list[tuple[str, Record, int]]] = defaultdict(list)
    deletions: dict[TripRef, tuple[str, Record]] = {}
    for k, (part, r) in enumerate(records):
        if not retry:
            count(c, r, "received")
        if r.kind == Kind.EVENT:
            itin = deleted_itin(r.key)
            if itin is not None:
                deletions.setdefault(TripRef(r.team, itin), (part, r))
                if not retry:
                    count(c, r, "deleted", kind=Kind.TRIP)
        cands[Key(r.kind, r.team, r.key)].append((part, r, k))
    # the first deletion of each trip: from the catalog, or from this batch
    tomb: dict[TripRef, Order] = {t: Order(r.received_us, part, r.offset) for t, (part, r) in deletions.items()}
    for t, order in known.deleted.items():
        tomb[t] = min(order, tomb.get(t, order))
    for key, pushes in cands.items():
        deleted_at = tomb.get(TripRef(key.team, key.key)) if key.kind == Kind.TRIP else None
        before = known.versions.get(key)
        cur = before
        chosen = None
        for part, r, k in pushes:
            order = Order(r.received_us, part, r.offset)
            if cur is not None and cur.order >= order:
                st.stale += 1   # older than the version in the lake (another partition, or a retry)
                if retry:
                    c.superseded.append(LogRef(part, r.offset))
                else:
                    count(c, r, "duplicates")
                continue
            if deleted_at is not None and deleted_at < order:
                st.deleted += 1  # pushed after its deletion: never visible
                count(c, r, "discarded")
                c.reclean.add(TripRef(key.team, key.key))
                continue
            try:
                if (part, r.offset) in poison:
                    raise ProjectionError(poison[(part, r.offset)])
                failpoints.hit("plan.project")  # tests: =bug makes every projection fail while set
                projected = project(part, r, k)
            except Exception as e:  # noqa: BLE001 - whatever a record raises is its own FAILED reason
                reason = str(e) if isinstance(e, ProjectionError) else f"{type(e).__name__}: {e}"
                c.failed.append(FailedRow(key.kind, key.team, key.key, part, r.offset, r.received_us, reason))
                st.failed += 1
                continue
            h = sha256(r, k)
            count(c, r, "duplicates" if cur is not None and cur.sha256 == h else "stored")
            cur = Version(order, h, projected.date.isoformat())
            chosen = (part, r, projected, h)
        if chosen is None:
            continue
        part, r, projected, h = chosen
        c.resolved.append(ResolvedRow(key.kind, key.team, key.key, r.received_us))
        if deleted_at is not None:
            st.deleted += 1  # stored before its deletion, which this batch or an earlier one applies
            continue
        if before is not None:  # the previous version's rows, in the partition it was stored in
            p.remove_keys[Partition(TABLES_OF_KIND[key.kind], key.team, before.date)].add(key.key)
        c.previous[key] = None if before is None else before.order
        c.versions.append(VersionRow(key.kind, key.team, key.key, received_us=r.received_us, part=part,
                                     offset=r.offset, body_sha256=h, date=projected.date.isoformat()))
        _buffer(p, key.team, projected)
        st.stored += 1
    for (team, itin), (part, r) in deletions.items():
        c.tombstones.append(TombstoneRow(team, itin, part=part, offset=r.offset, received_us=r.received_us))
        stored = known.versions.get(Key(Kind.TRIP, team, itin))  # where the deleted trip's rows are
        c.previous[Key(Kind.TRIP, team, itin)] = None if stored is None else stored.order
        if stored is not None:
            p.delete_keys[Partition(TRIP_TABLES, team, stored.date)].add(itin)
            c.drop_versions.append(Key(Kind.TRIP, team, itin))
        c.applied.append(TripRef(team, itin))
    return p


def _buffer(p: Plan, team: str, projected: Projected) -> None:
    d = projected.date.isoformat()
    for tbl, rows in projected.rows.items():
        if rows:
            p.buffers[Buffer(tbl, team, d)].append(rows)
    if projected.samples is not None:
        p.buffers[Buffer("trip_samples", team, d)].append(projected.samples)

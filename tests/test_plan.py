"""The plan rules, one by one (``lake.plan.plan`` is a pure function): what happens to each push
of a key given the key's version in the lake and the tombstones, and that splitting the same
pushes into batches at any boundary decides the same."""
from __future__ import annotations

import datetime as dt
import itertools

import pytest

from ingest.record import Kind, Record
from lake.catalog import STAT_FIELDS, Commit, Order, Version
from lake.plan import Key, Known, Partition, TripRef, plan
from lake.project import Projected, ProjectionError
from lake.schema import TRIP_TABLES

DAY = dt.date(2025, 1, 20)
T0 = int(dt.datetime(2025, 1, 20, 8, tzinfo=dt.timezone.utc).timestamp() * 1e6)


def rec(kind: int, key: str, offset: int, body: bytes = b"v1", team: str = "acme") -> tuple[str, Record]:
    """A push at offset ``offset`` of p0, received ``offset`` seconds after T0."""
    return "p0", Record(kind, offset, T0 + offset * 1_000_000, team, key, body)


def trip(itin: str, offset: int, body: bytes = b"v1", team: str = "acme"):
    return rec(Kind.TRIP, itin, offset, body, team)


def deletion(itin: str, offset: int, team: str = "acme"):
    return rec(Kind.EVENT, f"{itin}:TRIP_DELETION", offset, b"{}", team)


def project(part: str, r: Record, k: int) -> Projected:
    """Rows that say which push they came from; a body b"bad" cannot be projected."""
    if r.body == b"bad":
        raise ProjectionError("bad body")
    if r.body == b"boom":
        raise KeyError("something unexpected")
    return Projected(DAY, {"trips" if r.kind == Kind.TRIP else "other": [{"from": r.offset}]})


def sha(r: Record, k: int) -> str:
    return r.body.decode()


def run(records, known: Known | None = None, **kw):
    return plan(records, project, sha, known or Known(), Commit("append"), **kw)


def counts(p) -> dict[str, int]:
    """The push counters of the plan, summed over days and kinds."""
    out = dict.fromkeys(STAT_FIELDS, 0)
    for c in p.commit.stats.values():
        for f, n in zip(STAT_FIELDS, c):
            out[f] += n
    return out


def trips_stored(p) -> list[tuple]:
    """The trip versions the plan stores (deletion events are versions of their own kind)."""
    return [v for v in p.commit.versions if v.kind == Kind.TRIP]


def version(offset: int, body: str = "v1") -> Version:
    return Version(Order(T0 + offset * 1_000_000, "p0", offset), body, DAY.isoformat())


def test_a_new_key_is_stored():
    p = run([trip("a", 1)])
    assert (p.stats.stored, counts(p)["stored"], counts(p)["received"]) == (1, 1, 1)
    assert [v[:3] for v in p.commit.versions] == [(Kind.TRIP, "acme", "a")]
    assert not p.remove_keys


def test_the_latest_push_of_a_batch_wins_and_the_same_body_is_a_duplicate():
    p = run([trip("a", 1), trip("a", 2, b"v2"), trip("a", 3, b"v2")])
    assert [v[5] for v in p.commit.versions] == [3]  # the last push is the version
    assert (counts(p)["stored"], counts(p)["duplicates"]) == (2, 1)
    assert [rows for rows in p.buffers.values()] == [[[{"from": 3}]]]


def test_a_push_older_than_the_lake_version_is_stale():
    known = Known({Key(Kind.TRIP, "acme", "a"): version(5)})
    p = run([trip("a", 4, b"v0")], known)
    assert (p.stats.stale, counts(p)["duplicates"], p.commit.versions, p.commit.superseded) == (1, 1, [], [])


def test_a_stale_failed_item_on_retry_is_superseded_and_not_counted_again():
    known = Known({Key(Kind.TRIP, "acme", "a"): version(5)})
    p = run([trip("a", 4, b"bad")], known, retry=True)
    assert p.commit.superseded == [("p0", 4)] and counts(p) == dict.fromkeys(STAT_FIELDS, 0)


def test_a_newer_push_replaces_the_lake_version_and_removes_its_rows():
    known = Known({Key(Kind.CRASH, "acme", "c"): version(1)})
    p = run([rec(Kind.CRASH, "c", 2, b"v2")], known)
    assert p.remove_keys == {Partition(("crashes",), "acme", DAY.isoformat()): {"c"}}
    assert [v[5] for v in p.commit.versions] == [2]


@pytest.mark.parametrize("exc_body,reason", [(b"bad", "bad body"), (b"boom", "KeyError: 'something unexpected'")])
def test_a_push_that_cannot_be_projected_is_failed_and_keeps_the_old_version(exc_body, reason):
    known = Known({Key(Kind.TRIP, "acme", "a"): version(1)})
    p = run([trip("a", 2, exc_body)], known)
    assert [(f[2], f[4], f[6]) for f in p.commit.failed] == [("a", 2, reason)]
    assert (p.commit.versions, dict(p.remove_keys), p.stats.failed) == ([], {}, 1)


def test_a_poisoned_record_is_failed_with_its_reason():
    p = run([trip("a", 1), trip("b", 2)], poison={("p0", 2): "compaction error: ValueError: x"})
    assert [(f[2], f[6]) for f in p.commit.failed] == [("b", "compaction error: ValueError: x")]
    assert [v[2] for v in p.commit.versions] == ["a"]


def test_a_trip_pushed_after_its_deletion_is_discarded():
    for known in (Known(), Known(deleted={TripRef("acme", "a"): Order(T0 + 1_000_000, "p0", 1)})):
        records = [deletion("a", 1), trip("a", 2)] if not known.deleted else [trip("a", 2)]
        p = run(records, known)
        assert (p.stats.deleted, counts(p)["discarded"], trips_stored(p)) == (1, 1, [])
        assert p.commit.reclean == {("acme", "a")}


def test_a_trip_stored_before_its_deletion_in_the_same_batch_never_lands():
    p = run([trip("a", 1), deletion("a", 2)])
    assert (trips_stored(p), p.stats.deleted) == ([], 1)
    assert not [b for b in p.buffers if b.tbl in TRIP_TABLES]
    assert (Kind.TRIP, "acme", "a", T0 + 1_000_000) in p.commit.resolved  # its FAILED items, if any, are over
    assert [t[:2] for t in p.commit.tombstones] == [("acme", "a")] and p.commit.applied == [("acme", "a")]


def test_a_deletion_removes_the_stored_trip_rows_and_its_version():
    known = Known({Key(Kind.TRIP, "acme", "a"): version(1)})
    p = run([deletion("a", 2)], known)
    # its rows are looked for (position deletes, rewritten within the step's budget)
    assert p.delete_keys == {Partition(TRIP_TABLES, "acme", DAY.isoformat()): {"a"}} and not p.remove_keys
    assert p.commit.drop_versions == [(Kind.TRIP, "acme", "a")] and counts(p)["deleted"] == 1


def test_a_deletion_is_per_team():
    p = run([trip("a", 1, team="globex"), deletion("a", 2, team="acme")])
    assert [v[1:3] for v in trips_stored(p)] == [("globex", "a")]


class Lake:
    """The state the catalog keeps between steps, as far as the plan sees it."""

    def __init__(self) -> None:
        self.known = Known()
        self.counts = dict.fromkeys(STAT_FIELDS, 0)
        self.failed: set[tuple[str, int]] = set()
        self.visible: dict[tuple[str, str], int] = {}   # (team, itin) -> offset of the stored push

    def step(self, records) -> None:
        p = run(records, Known(dict(self.known.versions), dict(self.known.deleted)))
        for kind, team, key, ts, part, off, h, date in p.commit.versions:
            self.known.versions[Key(kind, team, key)] = Version(Order(ts, part, off), h, date)
            if kind != Kind.EVENT:
                self.visible[(team, key)] = off
        for kind, team, key in p.commit.drop_versions:
            del self.known.versions[Key(kind, team, key)]
        for team, itin, part, off, ts in p.commit.tombstones:
            prev = self.known.deleted.get(TripRef(team, itin))
            self.known.deleted[TripRef(team, itin)] = min(Order(ts, part, off), prev or Order(ts, part, off))
            self.visible.pop((team, itin), None)
        for f in p.commit.failed:
            self.failed.add((f.key, f.offset))
        for k, v in counts(p).items():
            self.counts[k] += v


PUSHES = [trip("a", 1), trip("b", 2, b"bad"), trip("a", 3, b"v2"), trip("b", 4), deletion("c", 5),
          trip("c", 6), trip("a", 7, b"v2"), trip("d", 8), deletion("d", 9), trip("b", 10, b"bad"),
          rec(Kind.CRASH, "x", 11), rec(Kind.CRASH, "x", 12, b"v2")]


@pytest.mark.parametrize("cuts", [(), (1,), (3,), (6,), (2, 5, 9), tuple(range(1, len(PUSHES)))])
def test_batch_boundaries_change_nothing(cuts):
    whole = Lake()
    whole.step(PUSHES)
    split = Lake()
    for lo, hi in itertools.pairwise((0, *cuts, len(PUSHES))):
        split.step(PUSHES[lo:hi])
    assert split.known == whole.known and split.counts == whole.counts and split.failed == whole.failed
    assert split.visible == whole.visible == {("acme", "a"): 7, ("acme", "b"): 4, ("acme", "x"): 12}

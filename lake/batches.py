"""Batches of log records, read and prepared for planning.

A batch is read from every log partition from the compactor's positions, ordered by arrival
(the order in which pushes of a key win), and its trips are split (``lake.splitter``), which
depends on the records only, never on the catalog: so a backlog's next batch is split while the
current one is planned. A prepared batch knows how to project each of its records.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ingest.keys import body_sha256
from ingest.log import LogReader, list_partitions
from ingest.record import Kind, Record

from .project import Projected, ProjectionError, SplitTrip, project, project_trip
from .routes import Routes
from .splitter import Parts, Splitter


@dataclass
class Batch:
    """Records read from the log: where the read started, the records (part, record) and where
    the next read starts."""
    start: dict[str, int]
    records: list[tuple[str, Record]] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    full: bool = False                            # a read stopped at a limit: a backlog
    split: Callable[[], Parts] | None = None      # from ``start``: waits for the split trips
    trips: dict[int, SplitTrip | ProjectionError] | None = None  # from ``finish``, by index in records
    routes: Routes | None = None

    @property
    def end(self) -> dict[str, int]:
        return {**self.start, **self.positions}

    def project(self, part: str, r: Record, k: int) -> Projected:
        """The rows of record ``k`` (a ``lake.plan.Projector``); raises what projection raises."""
        if r.kind != Kind.TRIP:
            return project(r, part)
        pre = self.trips[k]
        if isinstance(pre, ProjectionError):
            raise pre
        if pre.has_route:
            p = project_trip(r, part, pre.doc, self.routes.count(k), route=k)
        else:
            p = project_trip(r, part, pre.doc, 0)
        if pre.route_problem:
            raise ProjectionError(pre.route_problem)
        return p

    def sha256(self, r: Record, k: int) -> str:
        """The body's hash (a trip's was taken when it was split: its body is gone by then)."""
        return self.trips[k].sha256 if r.kind == Kind.TRIP else body_sha256(r.body)


# bodies a step reads at most: a step writes one file per table and partition, so its size sets
# how many files a backlog makes (measured on 15,000 trips, 28 partitions: 64 MB, 2,688 files,
# 23.1 s; 128 MB, 1,344 files, 19.3 s, compactor RSS 371 -> 585 MB)
BATCH_BYTES = 128 << 20


class BatchReader:
    def __init__(self, data_dir: Path, splitter: Splitter, batch_records: int = 200_000,
                 batch_bytes: int = BATCH_BYTES):
        self.data_dir = Path(data_dir)
        self.splitter = splitter
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        self._readers: dict[str, LogReader] = {}

    def read(self, positions: dict[str, int], limit: int | None = None, parts: set[str] | None = None) -> Batch:
        """The next records of every partition (or of ``parts``), a batch's worth. With ``limit``
        (isolating a record that fails its step), at most that many records in all, strictly: the
        partitions after the one that spends the budget are not read, so a batch of one record
        is one record, however many partitions have some waiting."""
        b = Batch(start={})
        budget = self.batch_records if limit is None else limit
        for part in list_partitions(self.data_dir):
            if parts is not None and part not in parts:
                continue
            if limit is not None and budget <= 0:
                break
            reader = self._readers.setdefault(part, LogReader(self.data_dir, part))
            b.start[part] = positions.get(part, 0)
            got = reader.read(b.start[part], max_records=max(budget, 1), max_bytes=self.batch_bytes)
            b.full |= reader.full
            if got:
                b.records.extend((part, r) for r in got)
                b.positions[part] = got[-1].offset + 1
                budget -= len(got)
        return b

    def start(self, b: Batch) -> Batch:
        """Order the batch by arrival and start splitting its trips (``finish`` waits)."""
        b.records.sort(key=lambda pr: (pr[1].received_us, pr[0], pr[1].offset))
        b.split = self.splitter.split([(k, r.body) for k, (_, r) in enumerate(b.records) if r.kind == Kind.TRIP])
        return b

    @staticmethod
    def finish(b: Batch) -> Batch:
        b.trips, b.routes = {}, Routes()
        for found, chunk in b.split():
            b.trips.update(found)
            b.routes.extend(chunk)
        b.split = None
        # a split trip's body is not read again (its hash came with it): a batch held while the
        # next one is read ahead costs its routes, not its bodies as well
        b.records = [(part, replace(r, body=b"") if r.kind == Kind.TRIP else r) for part, r in b.records]
        return b

    def prepare(self, b: Batch) -> Batch:
        return self.finish(self.start(b))

    def reset(self) -> None:
        """Forget cached segment lists (after the cleaner rewrote segments)."""
        for r in self._readers.values():
            r.reset()

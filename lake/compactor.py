"""The compactor: projects new log records into Parquet and commits them to the catalog.

One step reads a batch from every log partition, keeps the latest push of each key, skips trips
under a tombstone, projects the rest (quarantining what cannot be projected as FAILED), rewrites
the files that held replaced or deleted keys, writes the new files, and then commits everything,
log positions included, in one catalog transaction. Files are written before the commit, so a
crash leaves only orphans (removed on the next start) and the positions still point at the
unprocessed records: nothing is lost or doubled.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.keys import deleted_itin
from ingest.keys import body_sha256
from ingest.log import LogReader, list_partitions, read_at, recover_idle_partitions, try_lock
from ingest.record import KIND_EVENT, KIND_TRIP, Record
from pushlake import failpoints
from pushlake.procs import exit_with

from . import files as lf
from . import status
from .catalog import STAT_FIELDS, Catalog, CatalogConflict, Commit
from .project import TABLES_OF_KIND, Projected, ProjectionError, project, project_trip, received_date, split_trips
from .routes import Routes
from .schema import SCHEMAS, TRIP_TABLES

log = logging.getLogger("pushlake.compactor")


class CompactorBusy(Exception):
    pass


class Isolating(Exception):
    """A step failed on something in its records, not on the machine: the next steps read
    smaller batches until the record is found and quarantined as FAILED. Retried at once."""


def transient(e: BaseException) -> bool:
    """Errors of the machine (disk, catalog, memory): the same batch is retried after a pause.
    Anything else is taken to come from the records, and is isolated: a step that fails on its
    input must not be retried as it is forever, holding back every team's pushes."""
    return isinstance(e, (OSError, sqlite3.Error, MemoryError))


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

    def add(self, o: "StepStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(o, k))


@dataclass
class _Input:
    """A batch read from the log: where it starts, its records and where the next one starts."""
    start: dict[str, int]
    records: list[tuple[str, Record]] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    full: bool = False          # a read stopped at a limit: a backlog
    split: Callable[[], list] | None = None  # from _start: waits for the split trips
    trips: dict | None = None   # from _finish
    routes: Routes | None = None


@dataclass
class _Batch:
    commit: Commit
    routes: Routes | None = None
    buffers: dict = field(default_factory=lambda: defaultdict(list))   # (tbl, team, date) -> list[Projected parts]
    remove_keys: dict = field(default_factory=lambda: defaultdict(set))  # (tables, team, date) -> keys


class Compactor:
    def __init__(self, data_dir: Path, out_dir: Path | None = None, retention_days: float = 7.0,
                 batch_records: int = 200_000, batch_bytes: int = 64 << 20, merge_min_files: int = 8,
                 recover: bool = True, workers: int | None = None, parallel_min_trips: int = 64):
        """``recover``: first run log recovery on partitions no receiver holds (on by default for
        the CLI; ``serve`` turns it off, its receivers recover their own partitions).
        ``workers``: processes that split trips of batches of at least ``parallel_min_trips``
        trips (default: one per core; 0 or 1: none)."""
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.parallel_min_trips = parallel_min_trips
        self._procs: ProcessPoolExecutor | None = None
        self._procs_used = 0.0
        self.data_dir = Path(data_dir)
        self.out_dir = Path(out_dir) if out_dir else self.data_dir
        self.retention = retention_days * 86400.0
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        self.merge_min_files = merge_min_files
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = try_lock(self.out_dir / "compactor.lock")
        if self._lock is None:
            raise CompactorBusy(f"another compactor is running on {self.out_dir}")
        self.recovered = recover_idle_partitions(self.data_dir) if recover else []
        self.catalog = Catalog(self.out_dir)
        self.readers: dict[str, LogReader] = {}
        self._ahead: _Input | None = None  # the next batch, split
        self._next: _Input | None = None   # the one after it, read
        # isolation of a record that makes its step fail (see ``step``)
        self._limit: int | None = None                 # records per batch while isolating
        self._until: dict[str, int] = {}               # end of the batch that failed
        self._poison: dict[tuple[str, int], str] = {}  # (part, offset) -> why its step failed
        self._failing: _Input | None = None
        self.status = status.Status()
        self._pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="compactor-write")
        lf.ensure_empty_files(self.out_dir)
        self.orphans_removed = self._remove_orphans()

    def release_idle_workers(self, after: float = 60.0) -> bool:
        """Stop the projection processes when no backlog has needed them for ``after`` seconds:
        a service that caught up should not keep them (and their memory) around."""
        if self._procs is None or time.monotonic() - self._procs_used < after:
            return False
        self._procs.shutdown(wait=True)
        self._procs = None
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._procs is not None:
            self._procs.shutdown(wait=True, cancel_futures=True)
            self._procs = None
        self.catalog.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- the projection step ------------------------------------------------------------------
    def step(self) -> StepStats:
        """One batch projected and committed. A step that fails on its input (not ``transient``)
        is bisected: the next steps read half as many records, then half again, until the one
        record that fails is alone; its projection is then FAILED with the error as its reason,
        and if even that step fails, the record is quarantined by a commit that only records it
        as FAILED and moves past it. Every other record is stored as usual, and full batches
        resume once the records of the failed batch are behind."""
        try:
            stats = self._step()
        except CatalogConflict:
            self._failing = None
            raise
        except Exception as e:
            inp, self._failing = self._failing, None
            self._ahead = self._next = None
            if transient(e) or inp is None or not inp.records:
                self._report(error=e)
                raise
            try:
                self._isolate(inp, e)
            finally:
                self._report(error=e)
            raise Isolating(f"{type(e).__name__}: {e}") from e
        positions = self.catalog.positions()
        if self._until and all(positions.get(p, 0) >= o for p, o in self._until.items()):
            log.info("past the batch that failed: full batches again")
            self._limit, self._until = None, {}
            self._poison.clear()
        self._report(stats, positions)
        return stats

    def _report(self, stats: StepStats | None = None, positions: dict[str, int] | None = None,
                error: BaseException | None = None) -> None:
        """Keep ``compactor.status`` current: at every step that did something or failed, and
        at least every 2 s when idle (a heartbeat), never failing the step itself."""
        st = self.status
        if error is not None:
            st.failed(error, isolating=self._limit is not None)
        else:
            was_failing = st.failing_since is not None
            st.succeeded(stats.records, positions, {k: getattr(stats, k) for k in ("records", "stored", "failed",
                                                                                    "seconds")})
            st.isolating = self._limit is not None
            if not (stats.records or was_failing or time.time() - st.updated_at > 2.0):
                return
        try:
            status.write(self.out_dir, st)
        except OSError:
            log.debug("could not write the compactor status", exc_info=True)

    def _isolate(self, inp: _Input, e: Exception) -> None:
        end = {**inp.start, **inp.positions}
        for p, o in end.items():
            self._until[p] = max(o, self._until.get(p, 0))
        if len(inp.records) > 1:
            self._limit = (len(inp.records) + 1) // 2
            log.warning("a step of %d records failed (%s: %s); retrying with %d records to find the record",
                        len(inp.records), type(e).__name__, e, self._limit)
            return
        self._limit = 1
        part, r = inp.records[0]
        reason = f"compaction error: {type(e).__name__}: {e}"
        if (part, r.offset) not in self._poison:
            log.warning("record %s@%d (%s) makes its step fail; storing it as FAILED: %s", part, r.offset, r.team,
                        reason)
            self._poison[(part, r.offset)] = reason
            return
        log.error("record %s@%d (%s) fails even as FAILED; quarantining it: %s", part, r.offset, r.team, reason)
        c = Commit("quarantine", positions={part: r.offset + 1}, summary=f"quarantined {part}@{r.offset}")
        c.failed.append((r.kind, r.team, r.key, part, r.offset, r.received_us, reason[:2000]))
        self._count(c, r, "received")
        self.catalog.commit(c)

    def _step(self) -> StepStats:
        t0 = time.monotonic()
        positions = self.catalog.positions()
        ahead, self._ahead = self._ahead, None
        if ahead is not None and self._limit is None and all(positions.get(p, 0) == o for p, o in ahead.start.items()):
            inp = ahead  # read and prepared while the previous step was writing
        else:
            inp = self._prepare(self._read(positions))
        self._failing = inp
        stats = StepStats(records=len(inp.records))
        if not inp.records:
            self._failing = None
            return stats
        # a backlog is pipelined: the next batch (read during the previous step) is split by the
        # projection processes while this one is planned on this thread, and the batch after it
        # is read while the pool writes this one. What is read ahead is used only if this step
        # commits (the next step checks where it starts).
        after = {**inp.start, **inp.positions}
        nxt, self._next = self._next, None
        if not inp.full or self._limit is not None:
            nxt = None
        else:
            try:
                if nxt is None or nxt.start != after:
                    nxt = self._read(after)
                nxt = self._start(nxt)
            except Exception:  # noqa: BLE001 - the next step reads again and reports it
                log.debug("reading ahead failed", exc_info=True)
                nxt = None
        batch = _Batch(Commit("append", positions=inp.positions), routes=inp.routes)
        self._plan(inp.records, batch, stats, trips=inp.trips)
        batch.commit.summary = (f"records={stats.records} stored={stats.stored} stale={stats.stale} "
                                f"deleted={stats.deleted} failed={stats.failed}")

        def read_ahead() -> None:
            if nxt is None:
                return
            try:
                self._ahead = self._finish(nxt)
                if nxt.full:
                    self._next = self._read({**nxt.start, **nxt.positions})
            except Exception:  # noqa: BLE001 - as above
                log.debug("reading ahead failed", exc_info=True)
        self._apply_and_commit(batch, stats, meanwhile=read_ahead)
        self._failing = None
        failpoints.hit("compactor.after_commit")
        stats.seconds = time.monotonic() - t0
        return stats

    def _read(self, positions: dict[str, int]) -> _Input:
        """The next batch of every partition, in order of arrival."""
        inp = _Input(start={})
        budget = self.batch_records if self._limit is None else self._limit
        for part in list_partitions(self.data_dir):
            reader = self.readers.setdefault(part, LogReader(self.data_dir, part))
            inp.start[part] = positions.get(part, 0)
            got = reader.read(inp.start[part], max_records=max(budget, 1), max_bytes=self.batch_bytes)
            inp.full |= reader.full
            if got:
                inp.records.extend((part, r) for r in got)
                inp.positions[part] = got[-1].offset + 1
                budget -= len(got)
        return inp

    def _prepare(self, inp: _Input) -> _Input:
        return self._finish(self._start(inp))

    def _start(self, inp: _Input) -> _Input:
        """Order the batch by arrival and start splitting its trips (``_finish`` waits): the
        split and route decoding depend on the records only (no catalog), so they run ahead of
        the step that plans them, and in other processes, since they are most of a trip's
        Python work, which one process's GIL would serialise."""
        inp.records.sort(key=lambda pr: (pr[1].received_us, pr[0], pr[1].offset))
        inp.split = self._split([(k, r.body) for k, (_, r) in enumerate(inp.records) if r.kind == KIND_TRIP])
        return inp

    def _finish(self, inp: _Input) -> _Input:
        inp.trips, inp.routes = {}, Routes()
        for found, chunk in inp.split():
            inp.trips.update(found)
            inp.routes.extend(chunk)
        inp.split = None
        # a split trip's body is not read again (its hash came with it): a batch held while the
        # next one is read ahead costs its routes, not its bodies as well
        inp.records = [(part, replace(r, body=b"") if r.kind == KIND_TRIP else r) for part, r in inp.records]
        return inp

    def _plan(self, records: list[tuple[str, Record]], b: _Batch, st: StepStats, trips: dict | None = None,
              retry: bool = False) -> None:
        """Decide the fate of every record, in order of arrival, as if each were processed alone:
        so the lake and the push counts do not depend on where batch boundaries fall. ``records``
        are sorted by arrival, ``trips`` (with ``b.routes``) prepared by ``_prepare``."""
        c = b.commit
        cands: dict[tuple[int, str, str], list[tuple[str, Record]]] = defaultdict(list)
        deletions: dict[tuple[str, str], tuple[str, Record]] = {}
        for k, (part, r) in enumerate(records):
            if not retry:
                self._count(c, r, "received")
            if r.kind == KIND_EVENT:
                itin = deleted_itin(r.key)
                if itin is not None:
                    deletions.setdefault((r.team, itin), (part, r))
                    if not retry:
                        self._count(c, r, "deleted", kind=KIND_TRIP)
            cands[(r.kind, r.team, r.key)].append((part, r, k))
        # the first deletion of each trip: from the catalog, or from this batch
        tomb: dict[tuple[str, str], tuple[int, str, int]] = {
            k: (r.received_us, part, r.offset) for k, (part, r) in deletions.items()}
        groups: dict[tuple[int, str], list[str]] = defaultdict(list)
        for (kind, team, key) in cands:
            groups[(kind, team)].append(key)
        known: dict[tuple[int, str, str], tuple[tuple[int, str, int], str, str]] = {}
        for (kind, team), keys in groups.items():
            for k, v in self.catalog.versions_of(kind, team, keys).items():
                known[(kind, team, k)] = v
            if kind == KIND_TRIP:
                for itin, order in self.catalog.deleted_among(team, keys).items():
                    tomb[(team, itin)] = min(order, tomb.get((team, itin), order))
        for (kind, team, key), lst in cands.items():
            deleted_at = tomb.get((team, key)) if kind == KIND_TRIP else None
            before = known.get((kind, team, key))
            cur = before
            chosen = None
            for part, r, k in lst:
                order = (r.received_us, part, r.offset)
                if cur is not None and cur[0] >= order:
                    st.stale += 1   # older than the version in the lake (another partition, or a retry)
                    if retry:
                        c.superseded.append((part, r.offset))
                    else:
                        self._count(c, r, "duplicates")
                    continue
                if deleted_at is not None and deleted_at < order:
                    st.deleted += 1  # pushed after its deletion: never visible
                    self._count(c, r, "discarded")
                    c.reclean.add((team, key))
                    continue
                try:
                    if (part, r.offset) in self._poison:
                        raise ProjectionError(self._poison[(part, r.offset)])
                    p = self._project(r, part, k, trips, b.routes)
                except Exception as e:  # noqa: BLE001 - whatever a record raises is its own FAILED reason
                    reason = str(e) if isinstance(e, ProjectionError) else f"{type(e).__name__}: {e}"
                    c.failed.append((kind, team, key, part, r.offset, r.received_us, reason))
                    st.failed += 1
                    continue
                h = trips[k][3] if r.kind == KIND_TRIP else body_sha256(r.body)
                self._count(c, r, "duplicates" if cur is not None and cur[1] == h else "stored")
                cur = (order, h, p.date.isoformat())
                chosen = (part, r, p, h)
            if chosen is None:
                continue
            part, r, p, h = chosen
            c.resolved.append((kind, team, key, r.received_us))
            if deleted_at is not None:
                st.deleted += 1  # stored before its deletion, which this batch or an earlier one applies
                continue
            if before is not None:  # the previous version's rows, in the partition it was stored in
                b.remove_keys[(TABLES_OF_KIND[kind], team, before[2])].add(key)
            c.versions.append((kind, team, key, r.received_us, part, r.offset, h, p.date.isoformat()))
            self._buffer(b, team, p)
            st.stored += 1
        by_team: dict[str, list[str]] = defaultdict(list)
        for team, itin in deletions:
            if (KIND_TRIP, team, itin) not in known:
                by_team[team].append(itin)
        stored_on = {k: v[2] for k, v in known.items()}  # where each stored trip's rows are
        for team, itins in by_team.items():
            for k, v in self.catalog.versions_of(KIND_TRIP, team, itins).items():
                stored_on[(KIND_TRIP, team, k)] = v[2]
        for (team, itin), (part, r) in deletions.items():
            c.tombstones.append((team, itin, part, r.offset, r.received_us))
            date = stored_on.get((KIND_TRIP, team, itin))
            if date is not None:
                b.remove_keys[(TRIP_TABLES, team, date)].add(itin)
                c.drop_versions.append((KIND_TRIP, team, itin))
            c.applied.append((team, itin))

    def _split(self, items: list[tuple[int, bytes]]) -> Callable[[], list[tuple[list, Routes]]]:
        """Start splitting these trips; the function returned waits for the parts. A small batch
        is split here, when its parts are asked for."""
        if self.workers < 2 or len(items) < self.parallel_min_trips:
            return lambda: [split_trips(items)]
        if self._procs is None:
            # forkserver: workers are not forked from this process, whose threads may hold locks
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["lake.project"])
            self._procs = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=exit_with,
                                              initargs=(os.getpid(),))
        # chunks of at most ~4 MB of bodies: a worker holds little at a time, and they finish evenly
        chunks: list[list[tuple[int, bytes]]] = [[]]
        held = 0
        for it in items:
            if held >= 4 << 20:
                chunks.append([])
                held = 0
            chunks[-1].append(it)
            held += len(it[1])
        self._procs_used = time.monotonic()
        procs = self._procs
        try:
            futures = [procs.submit(split_trips, c) for c in chunks]
        except BrokenProcessPool:
            futures = None

        def parts() -> list[tuple[list, Routes]]:
            try:
                if futures is not None:
                    return [f.result() for f in futures]
            except BrokenProcessPool:
                pass
            log.warning("a projection process died; splitting this batch here and starting new ones")
            procs.shutdown(wait=False, cancel_futures=True)
            if self._procs is procs:
                self._procs = None
            return [split_trips(items)]
        return parts

    @staticmethod
    def _project(r: Record, part: str, k: int, trips: dict, routes: Routes | None) -> Projected:
        if r.kind != KIND_TRIP:
            return project(r, part)
        pre = trips[k]
        if isinstance(pre, ProjectionError):
            raise pre
        doc, has_route, route_problem, _ = pre
        p = project_trip(r, part, doc, routes.count(k) if has_route else 0)
        if route_problem:
            raise ProjectionError(route_problem)
        p.route = k if has_route else None
        return p

    @staticmethod
    def _count(c: Commit, r: Record, what: str, kind: int | None = None) -> None:
        day = received_date(r).isoformat()
        counts = c.stats.setdefault((day, r.team, r.kind if kind is None else kind), [0] * len(STAT_FIELDS))
        counts[STAT_FIELDS.index(what)] += 1

    # -- retry of FAILED items (asynchronous tasks) ---------------------------------------------
    def run_tasks_safely(self) -> int:
        """run_tasks, but a task whose items cannot be processed is marked FAILED with the error
        instead of being retried forever."""
        task = self.catalog.next_task()
        try:
            return self.run_tasks()
        except Exception as e:  # noqa: BLE001 - recorded on the task
            log.exception("retry task %s failed", task[0] if task else "?")
            if task:
                self.catalog.fail_task(task[0], f"{type(e).__name__}: {e}")
            return 0

    def run_tasks(self, chunk: int = 200) -> int:
        """Advance the oldest unfinished retry task by up to ``chunk`` items; return items done."""
        task = self.catalog.next_task()
        if task is None:
            return 0
        task_id, kind = task
        items = self.catalog.task_items(task_id, chunk)
        by_part: dict[str, list[int]] = defaultdict(list)
        for fid, part, offset, status in items:
            if status == "FAILED":
                by_part[part].append(offset)
        records: list[tuple[str, Record]] = []
        for part, offsets in by_part.items():
            found = read_at(self.data_dir, part, offsets)
            records.extend((part, found[o]) for o in offsets if o in found)
        inp = self._prepare(_Input(start={}, records=records))
        batch = _Batch(Commit("retry", task=(task_id, [fid for fid, *_ in items])), routes=inp.routes)
        st = StepStats(records=len(records))
        self._plan(inp.records, batch, st, trips=inp.trips, retry=True)
        batch.commit.summary = f"retry task {task_id}: {st.stored} stored, {st.failed} failed again"
        self._apply_and_commit(batch, st, failpoint="task.before_commit")
        return len(items)

    def _apply_and_commit(self, b: _Batch, st: StepStats, failpoint: str = "compactor.before_commit",
                          meanwhile=None) -> None:
        """Write the files, then commit; if the commit fails, the files just written are removed
        (a step retried every few seconds must not fill the disk with orphans). ``meanwhile``
        runs on this thread while the pool writes."""
        try:
            self._apply(b, st, meanwhile)
            failpoints.hit(failpoint)
            self.catalog.commit(b.commit)
        except BaseException:
            for f in b.commit.add_files:
                (self.out_dir / f.path).unlink(missing_ok=True)
            raise

    @staticmethod
    def _buffer(b: _Batch, team: str, p: Projected) -> None:
        d = p.date.isoformat()
        for tbl, rows in p.rows.items():
            if rows:
                b.buffers[(tbl, team, d)].append(rows)
        if p.route is not None:
            trip = p.rows["trips"][0]
            b.buffers[("trip_samples", team, d)].append(
                (p.route, trip["itin_id"], trip["team_id"], trip["date"], trip["received_at"], trip["log_part"],
                 trip["log_offset"]))

    def _apply(self, b: _Batch, st: StepStats, meanwhile=None) -> None:
        c = b.commit
        def rewrite(fid: int, tbl: str, team: str, date: str, path: str, keys: pa.Array):
            """Copy-on-write: the file without the rows of these keys (a file that holds none of
            them, found by reading its key columns only, is left alone)."""
            probe = pq.read_table(self.out_dir / path, columns=lf.KEY_COLUMNS[tbl])
            if not pc.any(pc.is_in(lf.key_array(tbl, probe), value_set=keys)).as_py():
                return fid, None, False
            t = lf.read_file(self.out_dir, path)
            t = t.filter(pc.invert(pc.is_in(lf.key_array(tbl, t), value_set=keys)))
            return fid, (lf.write_file(self.out_dir, tbl, team, date, t) if t.num_rows else None), True

        def build_and_write(key: tuple[str, str, str], parts: list):
            tbl, team, date = key
            if tbl == "trip_samples":
                table = self._samples(b.routes, parts)
            else:
                table = pa.Table.from_pylist([row for rows in parts for row in rows], schema=SCHEMAS[tbl])
            return lf.write_file(self.out_dir, tbl, team, date, table) if table.num_rows else None

        # Arrow and Parquet release the GIL: files are rewritten, built and written on every core
        rewrites = []
        for (tables, team, date), keys in b.remove_keys.items():
            karr = pa.array(sorted(keys), pa.string())
            rewrites += [self._pool.submit(rewrite, *f, karr) for f in self.catalog.partition_files(tables, team, date)]
        writes = [self._pool.submit(build_and_write, *kv) for kv in b.buffers.items()]
        try:
            if meanwhile is not None:
                meanwhile()
        finally:
            # every job ends before this step does: if one failed, the caller must still know
            # every file the others wrote, to remove them
            wait(rewrites + writes)
        for job in rewrites:
            if job.exception() is None:
                fid, new, touched = job.result()
                if touched:
                    c.remove_files.add(fid)
                    if new is not None:
                        c.add_files.append(new)
                    st.files_rewritten += 1
        for job in writes:
            if job.exception() is None and job.result() is not None:
                c.add_files.append(job.result())
                st.files_written += 1
        for job in rewrites + writes:
            if job.exception() is not None:
                raise job.exception()
        failpoints.hit("compactor.after_write")

    @staticmethod
    def _samples(routes: Routes, parts: list[tuple]) -> pa.Table:
        names = ("itin_id", "team_id", "date", "received_at", "log_part", "log_offset")
        cols = list(zip(*parts))
        common = {name: pa.array(cols[i + 1], SCHEMAS["trip_samples"].field(name).type) for i, name in enumerate(names)}
        return routes.samples(list(cols[0]), common)

    def drain(self, progress=None) -> StepStats:
        """Project everything in the log, then finish any queued retry task."""
        total = StepStats()
        while True:
            try:
                s = self.step()
            except Isolating:
                continue  # smaller batches until the record that fails is FAILED
            if not s.records:
                while self.run_tasks_safely():
                    pass
                return total
            total.add(s)
            if progress:
                progress(total)

    # -- maintenance --------------------------------------------------------------------------
    def _remove_orphans(self) -> int:
        """Files left by a compaction that crashed before its commit."""
        known = self.catalog.all_paths()
        n = 0
        root = self.out_dir / "lake"
        for tbl in SCHEMAS:
            for p in (root / tbl).rglob("*.parquet") if (root / tbl).exists() else ():
                if str(p.relative_to(self.out_dir)) not in known:
                    p.unlink()
                    n += 1
        if n:
            log.warning("removed %d orphan file(s) of an interrupted compaction", n)
        return n

    def merge_small_files(self, max_groups: int | None = None, budget_bytes: int = 32 << 20,
                          catalog: Catalog | None = None) -> int:
        """Merge partitions that accumulated many small files from frequent commits.

        Files are streamed one at a time into the merged file, and one merged file takes at most
        ``budget_bytes`` of input: memory stays bounded by one file, and a merge is short enough to
        run between projection steps (``max_groups`` merges per call). Returns files merged."""
        cat = catalog or self.catalog
        groups: dict[tuple[str, str, str], list[tuple]] = defaultdict(list)
        for fid, tbl, team, date, path, rows, nbytes in cat.live_files():
            groups[(tbl, team, date)].append((fid, path, nbytes))
        merged = done = 0
        for (tbl, team, date), fl in groups.items():
            small = sorted((f for f in fl if f[2] < budget_bytes // 2), key=lambda f: f[2])
            if len(small) < self.merge_min_files:
                continue
            chosen, total = [], 0
            for f in small:
                if chosen and total + f[2] > budget_bytes:
                    break
                chosen.append(f)
                total += f[2]
            if len(chosen) < 2:
                continue
            c = Commit("merge", remove_files={f[0] for f in chosen})
            c.add_files.append(lf.merge_files(self.out_dir, tbl, team, date, [p for _, p, _ in chosen]))
            c.summary = f"merged {len(chosen)} files of {tbl}/{team}/{date}"
            try:
                cat.commit(c)
            except BaseException:
                (self.out_dir / c.add_files[0].path).unlink(missing_ok=True)
                raise
            merged += len(chosen)
            done += 1
            if max_groups is not None and done >= max_groups:
                break
        return merged

    def vacuum(self, now: float | None = None) -> int:
        """Delete files replaced longer than the retention ago; readers keep older snapshots until then."""
        now = time.time() if now is None else now
        expired = self.catalog.expired_files(now - self.retention)
        for _, rel in expired:
            try:
                (self.out_dir / rel).unlink()
            except FileNotFoundError:
                pass
        if expired:
            self.catalog.forget_files([i for i, _ in expired])
        return len(expired)

    def clean_log(self, now: float | None = None) -> int:
        from .cleaner import clean_log
        now = time.time() if now is None else now
        n = clean_log(self.data_dir, self.catalog, now - self.retention)
        if n:
            for r in self.readers.values():
                r.reset()
        return n

    def maintain(self) -> dict:
        return {"merged": self.merge_small_files(), "vacuumed": self.vacuum(), "log_records_erased": self.clean_log()}

    def run_forever(self, stop, interval: float = 0.2, maintain_every: float = 30.0,
                    merge_every: float = 2.0) -> None:
        """Project as records arrive. Small files are merged by a thread beside the projection
        (every ``merge_every`` seconds); vacuum and the log cleaner run every ``maintain_every``
        seconds, busy or not. A step that drained the log is followed by a pause of ``interval``
        (records gather into bigger, cheaper steps: fewer files and commits for at most
        ``interval`` more latency); a full step is not."""
        last_maint = time.monotonic()
        merger = threading.Thread(target=self._merge_loop, args=(stop, merge_every), name="merger", daemon=True)
        merger.start()
        while not stop.is_set():
            try:
                s = self.step()
                if s.records:
                    log.debug("compacted %d records (%d stored, %d failed) in %.2fs",
                             s.records, s.stored, s.failed, s.seconds)
                elif self.run_tasks_safely():
                    continue
                self.release_idle_workers()
                if time.monotonic() - last_maint > maintain_every:
                    last_maint = time.monotonic()  # a failing maintenance must not slow every step
                    self._maintain_safely()
                if s.records >= self.batch_records or s.seconds > interval:
                    continue  # a backlog: keep going
            except CatalogConflict:
                log.info("a merge replaced a file this step rewrote; redoing the step")
                continue
            except Isolating:
                continue  # at once: the next, smaller step does not fail the same way
            except Exception:
                log.exception("compaction step failed; retrying")
                stop.wait(5)
            stop.wait(interval)
        merger.join()

    def _maintain_safely(self) -> None:
        """Vacuum and the log cleaner each on their own: one failing does not stop the other,
        nor projection."""
        for name, job, what in (("vacuum", self.vacuum, "vacuumed"), ("log cleaner", self.clean_log,
                                                                      "log_records_erased")):
            try:
                n = job()
            except Exception:  # noqa: BLE001 - logged, retried at the next maintenance
                log.exception("%s failed; retrying at the next maintenance", name)
                continue
            if n:
                log.info("maintenance: %s=%d", what, n)

    def _merge_loop(self, stop, every: float) -> None:
        """Merges run beside projection (own catalog connection): Parquet work releases the GIL,
        and a step never waits for a merge. A commit that finds its input files already replaced
        (by the other) fails cleanly and is redone."""
        cat = Catalog(self.out_dir)
        try:
            while not stop.wait(every):
                try:
                    while self.merge_small_files(max_groups=1, catalog=cat) and not stop.is_set():
                        pass
                except CatalogConflict:
                    continue
                except Exception:
                    log.exception("merge failed; retrying later")
        finally:
            cat.close()

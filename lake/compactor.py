"""The compactor: projects new log records into Parquet and commits them to the catalog.

This module only orchestrates; each job has its own module:

- ``lake.batches``: reading a batch from every partition and preparing it (trips split by the
  projection processes of ``lake.splitter``);
- ``lake.plan``: the fate of every record (a pure function: stored, stale, discarded, FAILED);
- ``lake.writer``: copy-on-write, new files, then ONE catalog commit, log positions included;
- ``lake.isolation``: bisecting a batch that fails on its input, so that one record cannot stop
  the lake;
- ``lake.tasks``: retry of FAILED items; ``lake.maintenance`` and ``lake.cleaner``: merge,
  vacuum, orphans, log cleaning; ``lake.status``: what ``/health`` and ``check`` read.

Files are written before the commit, so a crash leaves only orphans (removed on the next start)
and the positions still point at the unprocessed records: nothing is lost or doubled.

Leases (``Catalog.acquire_lease``): a compactor commits its node's partitions only while it holds
the lease ``partitions:<node>``, and every commit checks it (fencing): a compactor that stalled
past the lease's expiry while another process took the node over cannot commit any more. The
jobs that span every node's files (merges, vacuum, orphans, the hive tree's reconciliation) run
only in the compactor holding the lease ``maintenance``, so N nodes do not merge N times.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ingest.log import check_node, list_partitions, recover_idle_partitions
from pushlake.fsutil import try_lock
from pushlake import failpoints, location
from pushlake.metrics import M

from . import files as lf
from . import hive, maintenance, status, tasks, upgrade
from .batches import BATCH_BYTES, Batch, BatchReader
from .catalog import Catalog, CatalogConflict, Commit, LeaseLost
from .isolation import Isolating, Isolation, transient
from .plan import StepStats, look_up, plan
from .splitter import Splitter
from .writer import Writer

log = logging.getLogger("pushlake.compactor")

__all__ = ["Compactor", "CompactorBusy", "Isolating", "LeaseHeld", "StepStats", "transient"]

LEASE_TTL = 30.0   # seconds a lease lasts unless renewed (commits and an idle heartbeat renew it)
MAINTENANCE = "maintenance"


class CompactorBusy(Exception):
    pass


class LeaseHeld(Exception):
    """Another live process holds this node's partitions (a stalled or duplicate compactor)."""


def partitions_lease(node: str) -> str:
    return f"partitions:{node}"


MERGE_NICE = 10  # nice levels the merge thread runs below the compactor's steps


def _lower_this_thread(by: int) -> None:
    """Lower the calling thread's priority only (on Linux, a thread's id is a PRIO_PROCESS target)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except OSError:
        log.debug("could not lower the merge thread's priority", exc_info=True)


class Compactor:
    def __init__(self, data_dir: Path, out_dir: Path | None = None, retention_days: float = 7.0,
                 batch_records: int = 200_000, batch_bytes: int = BATCH_BYTES, merge_min_files: int = 8,
                 recover: bool = True, workers: int | None = None, parallel_min_trips: int = 64,
                 lease_ttl: float = LEASE_TTL, every_node: bool = False, cow_rows: int | None = None):
        """``recover``: first run log recovery on partitions no receiver holds (on by default for
        the CLI; ``serve`` turns it off, its receivers recover their own partitions).
        ``workers``: processes that split trips of batches of at least ``parallel_min_trips``
        trips (default: one per core; 0 or 1: none). ``cow_rows``: rows of files a step rewrites
        for the deletions it projects (default ``lake.writer.COW_ROWS``; 0: every deletion waits
        as position deletes for ``apply_deletes``)."""
        self.data_dir = Path(data_dir)
        self.out_dir = Path(out_dir) if out_dir else self.data_dir
        self.retention = retention_days * 86400.0
        self.batch_records = batch_records
        self.merge_min_files = merge_min_files
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # one compactor per log (a node's --data); on one machine per lake (``rebuild --into``
        # builds a new one from the same log)
        held = self.data_dir if location.shared() else self.out_dir
        held.mkdir(parents=True, exist_ok=True)
        self._lock = try_lock(held / "compactor.lock")
        if self._lock is None:
            raise CompactorBusy(f"another compactor is running on {held}")
        # ``every_node``: a rebuild from the logs of every node, gathered in one directory (into
        # a new catalog); it is none of the nodes, and takes part in no log cleaning
        self.node = "(rebuild)" if every_node else location.node_name()
        if not every_node:
            check_node(self.data_dir, self.node)
        self.shared = location.shared()
        self.holder = f"{self.node or 'local'}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_ttl = lease_ttl
        self._renewed = 0.0
        self.recovered = recover_idle_partitions(self.data_dir) if recover else []
        self.catalog = Catalog(self.out_dir)
        # a node takes part in log cleaning once it has a log (a reader machine that runs a
        # compactor for a retry task must not become a node that erasure waits for)
        self._registered = every_node
        self.splitter = Splitter(workers, parallel_min_trips)
        self.batches = BatchReader(self.data_dir, self.splitter, batch_records, batch_bytes)
        self.writer = Writer(self.out_dir, self.catalog, cow_rows)
        self.isolation = Isolation()
        self.status = status.Status()
        self._counted_at = float("-inf")
        self._ahead: Batch | None = None  # the next batch, split
        self._next: Batch | None = None   # the one after it, read
        self._failing: Batch | None = None
        self.orphans_removed, self.relinked = 0, (0, 0)
        self.maintaining = threading.Event()  # this compactor holds the maintenance lease
        if not self.shared:  # on one machine the compactor lock is the maintenance lease
            self.maintaining.set()
            lf.ensure_empty_files(self.out_dir)  # removes the stand-ins of earlier versions
            upgrade.upgrade(self.out_dir, self.catalog)
            self._tidy()

    def _tidy(self) -> None:
        """What a crash may leave: orphan files, a hive tree behind its catalog (the maintenance
        lease's holder does it for every node)."""
        self.orphans_removed = maintenance.remove_orphans(self.out_dir, self.catalog)
        self.relinked = hive.reconcile(self.out_dir, self.catalog)  # a crash between a commit and its links

    # -- leases -------------------------------------------------------------------------------
    def hold_partitions(self) -> None:
        """Hold (or renew) the lease on this node's partitions; ``LeaseHeld`` if another live
        process has it."""
        cat, now = self.catalog, time.monotonic()
        if not self._registered and list_partitions(self.data_dir):
            cat.register_node(self.node)
            self._registered = True
        if cat.lease is not None:
            if now - self._renewed < self.lease_ttl / 3:
                return
            if cat.renew_lease(cat.lease):
                self._renewed = now
                return
            log.warning("lost the lease on the partitions of node %r: another process took it over", self.node)
            self._lost()
        # the compactor lock of this data directory is ours: an earlier holder on this host is dead
        # (killed before it released the lease); on one machine every earlier holder is
        dead = f"{self.node or 'local'}@{socket.gethostname()}:" if self.shared else ""
        lease = cat.acquire_lease(partitions_lease(self.node), self.holder, self.lease_ttl, dead=dead)
        if lease is None:
            raise LeaseHeld(f"the partitions of node {self.node or '(local)'!r} are held by another process "
                            f"(lease {partitions_lease(self.node)!r}); retrying")
        cat.lease, self._renewed = lease, now
        self._ahead = self._next = None  # read before the lease: positions may have moved since

    def _lost(self) -> None:
        self.catalog.lease = None
        self._ahead = self._next = None
        self._failing = None
        self.batches.reset()

    def hold_maintenance(self, cat: Catalog) -> bool:
        """Hold (or renew) the maintenance lease with ``cat`` (whose commits it then fences);
        on one machine always held."""
        if not self.shared:
            return True
        try:
            if cat.lease is not None and cat.renew_lease(cat.lease):
                return True
            if cat.lease is not None:
                log.info("the maintenance lease moved to another node")
                self._drop_maintenance(cat)
            lease = cat.acquire_lease(MAINTENANCE, self.holder, self.lease_ttl)
        except Exception:  # noqa: BLE001 - the catalog unreachable: not holding it
            log.warning("could not renew the maintenance lease", exc_info=True)
            self._drop_maintenance(cat)
            return False
        if lease is None:
            return False
        cat.lease = lease
        log.info("node %r now runs maintenance (merges, vacuum, orphans) for the cluster", self.node)
        try:
            self._tidy()
        except Exception:  # noqa: BLE001 - retried at the next maintenance
            log.exception("tidying the lake after taking the maintenance lease failed")
        self.maintaining.set()
        return True

    def _drop_maintenance(self, cat: Catalog) -> None:
        cat.lease = None
        self.maintaining.clear()

    def release_idle_workers(self, after: float = 60.0) -> bool:
        return self.splitter.release_idle(after)

    def close(self) -> None:
        self.writer.close()
        self.splitter.close()
        if self.catalog.lease is not None:
            try:  # the next process need not wait for the lease to expire
                self.catalog.release_lease(self.catalog.lease)
            except Exception:  # noqa: BLE001 - it expires anyway
                log.debug("could not release the partitions lease", exc_info=True)
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
        raises ``Isolating`` and the next steps narrow down to the record (``lake.isolation``);
        a transient error is raised as it is, and the same batch is read again."""
        try:
            self.hold_partitions()
            stats, positions = self._step()
        except CatalogConflict:
            self._failing = None
            self._ahead = self._next = None
            raise
        except LeaseLost:
            self._lost()
            raise
        except LeaseHeld as e:
            self._report(error=e)
            raise
        except Exception as e:
            b, self._failing = self._failing, None
            self._ahead = self._next = None
            if transient(e) or b is None or not b.records:
                self._report(error=e)
                raise
            try:
                quarantine = self.isolation.failed(b.records, b.end, e)
                if quarantine is not None:
                    self.catalog.commit(quarantine)
            finally:
                self._report(error=e)
            raise Isolating(f"{type(e).__name__}: {e}") from e
        self.isolation.committed(positions)
        self._report(stats, positions)
        return stats

    def _step(self) -> tuple[StepStats, dict[str, int]]:
        """The step, and the log positions once it committed (its batch's end over the catalog's)."""
        t0 = time.monotonic()
        hive.reconcile_if_needed(self.out_dir, self.catalog)
        positions = self.catalog.positions()
        self.isolation.committed(positions)  # a quarantine commit may have moved past the failed batch
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not self.isolation.active and all(
                positions.get(p, 0) == o for p, o in ahead.start.items()):
            b = ahead  # read and prepared while the previous step was writing
        else:
            b = self.batches.read(positions, self.isolation.limit, self.isolation.partitions(positions))
            self._failing = b  # a batch that fails as it is prepared is isolated too
            b = self.batches.prepare(b)
        self._failing = b
        if not b.records:
            self._failing = None
            return StepStats(), positions
        # a backlog is pipelined: the next batch (read during the previous step) is split by the
        # projection processes while this one is planned on this thread, and the batch after it
        # is read while the pool writes this one. What is read ahead is used only if this step
        # commits (the next step checks where it starts).
        nxt, self._next = self._next, None
        if not b.full or self.isolation.active:
            nxt = None
        else:
            try:
                if nxt is None or nxt.start != b.end:
                    nxt = self.batches.read(b.end)
                nxt = self.batches.start(nxt)
            except Exception:  # noqa: BLE001 - the next step reads again and reports it
                log.debug("reading ahead failed", exc_info=True)
                nxt = None
        p = plan(b.records, b.project, b.sha256, look_up(self.catalog, b.records),
                 Commit("append", positions=b.positions), poison=self.isolation.poison)
        st = p.stats
        p.commit.summary = (f"records={st.records} stored={st.stored} stale={st.stale} "
                            f"deleted={st.deleted} failed={st.failed}")

        def read_ahead() -> None:
            if nxt is None:
                return
            try:
                self._ahead = self.batches.finish(nxt)
                if nxt.full:
                    self._next = self.batches.read(nxt.end)
            except Exception:  # noqa: BLE001 - as above
                log.debug("reading ahead failed", exc_info=True)
        self.writer.write_and_commit(p, b.routes, meanwhile=read_ahead)
        self._failing = None
        failpoints.hit("compactor.after_commit")
        st.seconds = time.monotonic() - t0
        return st, {**positions, **b.positions}

    def _report(self, stats: StepStats | None = None, positions: dict[str, int] | None = None,
                error: BaseException | None = None) -> None:
        """Keep ``compactor.status`` current: at every step that did something or failed, and
        at least every 2 s when idle (a heartbeat), never failing the step itself."""
        st = self.status
        self._measure(stats, error)
        if error is not None:
            st.failed(error, isolating=self.isolation.active)
        else:
            was_failing = st.failing_since is not None
            st.succeeded(stats.records, positions, {k: getattr(stats, k) for k in ("records", "stored", "failed",
                                                                                    "seconds")})
            st.isolating = self.isolation.active
            if not (stats.records or was_failing or time.time() - st.updated_at > 2.0):
                return
        try:
            status.write(self.out_dir, st)
        except OSError:
            log.debug("could not write the compactor status", exc_info=True)

    COUNTS_EVERY_S = 5.0  # the catalog-wide counts behind the FAILED and pending-tombstone gauges

    def _measure(self, stats: StepStats | None, error: BaseException | None) -> None:
        """The step's metrics (``pushlake.metrics``); never fails the step."""
        try:
            m = M()
            if error is not None:
                m.steps.labels("failed").inc()
            elif stats is not None and stats.records:
                m.steps.labels("ok").inc()
                m.step_seconds.observe(stats.seconds)
                for fate in ("stored", "stale", "deleted", "failed"):
                    if getattr(stats, fate):
                        m.projected.labels(fate).inc(getattr(stats, fate))
            now = time.monotonic()
            if now - self._counted_at >= self.COUNTS_EVERY_S or (stats is not None and stats.failed):
                self._counted_at = now
                failed, pending = self.catalog.health_counts()
                m.failed_items.set(failed)
                m.pending_tombstones.set(pending)
        except Exception:  # noqa: BLE001 - metrics are never worth a failed step
            log.debug("could not update the compactor's metrics", exc_info=True)

    def drain(self, progress=None, apply_deletes: bool = True) -> StepStats:
        """Project everything in the log, then finish any queued retry task and (unless told
        not to) rewrite the files holding position deletes."""
        total = StepStats()
        while True:
            try:
                s = self.step()
            except Isolating:
                continue  # smaller batches until the record that fails is FAILED
            except CatalogConflict:
                continue  # another commit changed what the step relied on: planned again
            except (LeaseHeld, LeaseLost) as e:
                raise CompactorBusy(str(e)) from e
            if not s.records:
                while self.run_tasks_safely():
                    pass
                while apply_deletes and self.apply_deletes():
                    pass
                return total
            total.add(s)
            if progress:
                progress(total)

    # -- retry of FAILED items (asynchronous tasks) ---------------------------------------------
    def run_tasks(self, chunk: int = 200) -> int:
        """Advance the oldest unfinished retry task by up to ``chunk`` items; return items done."""
        return tasks.run_task(self.data_dir, self.catalog, self.batches, self.writer, chunk)

    def run_tasks_safely(self) -> int:
        return tasks.run_task_safely(self.data_dir, self.catalog, self.batches, self.writer)

    # -- maintenance --------------------------------------------------------------------------
    def merge_small_files(self, max_groups: int | None = None, budget_bytes: int | None = None) -> int:
        return maintenance.merge_small_files(self.out_dir, self.catalog, self.merge_min_files, max_groups,
                                             budget_bytes)

    def apply_deletes(self) -> int:
        """Rewrite the files holding position deletes (deletions beyond their step's budget)."""
        while True:
            try:
                return maintenance.apply_deletes(self.out_dir, self.catalog)
            except CatalogConflict:
                continue  # a step rewrote one of the files meanwhile

    def vacuum(self, now: float | None = None) -> int:
        return maintenance.vacuum(self.out_dir, self.catalog, self.retention, now)

    def clean_log(self, now: float | None = None) -> int:
        from .cleaner import clean_log
        now = time.time() if now is None else now
        n = clean_log(self.data_dir, self.catalog, now - self.retention, node=self.node)
        if n:
            self.batches.reset()
        return n

    def maintain(self) -> dict:
        """What ``pushlake compact`` runs after projecting: merges, vacuum, the log cleaner, and
        a sync of the Iceberg mirror (``serve`` syncs it in its own process). In a cluster the
        jobs of every node's files run only if the maintenance lease is free (``maintained``
        says whether they ran); the log cleaner of this node's log always runs."""
        from .iceberg import Mirror
        out = {"log_records_erased": self.clean_log(), "merged": 0, "vacuumed": 0, "iceberg_commits": 0}
        cat = Catalog(self.out_dir)
        try:
            out["maintained"] = self.hold_maintenance(cat)
            if out["maintained"]:
                out["merged"] = maintenance.merge_small_files(self.out_dir, cat, self.merge_min_files)
                out["vacuumed"] = maintenance.vacuum(self.out_dir, cat, self.retention)
                with Mirror(self.out_dir, cat.url) as m:
                    out["iceberg_commits"] = m.sync(cat)
        finally:
            self._let_go(cat)
        return out

    def _let_go(self, cat: Catalog) -> None:
        if self.shared and cat.lease is not None:
            try:
                cat.release_lease(cat.lease)
            except Exception:  # noqa: BLE001 - it expires anyway
                log.debug("could not release the maintenance lease", exc_info=True)
            self._drop_maintenance(cat)
        cat.close()

    def _merge_loop(self, stop, every: float) -> None:
        """Merges beside projection (own catalog connection, holding the maintenance lease in a
        cluster): Parquet work releases the GIL, and a step never waits for a merge. A commit
        that finds its input files already replaced (by the other) fails cleanly and is redone.
        The thread runs 10 nice levels below the steps (Linux schedules threads one by one), so
        that a merge, which can wait, takes the cores only when projection and acks leave them:
        a step that ran beside a merge took up to 2.3 s instead of 0.25 s, and a deletion waited
        for it (bench.openlake_bench)."""
        _lower_this_thread(MERGE_NICE)
        cat = Catalog(self.out_dir)
        try:
            while not stop.wait(every):
                if not self.hold_maintenance(cat):
                    continue
                try:
                    # deletions beyond their step's budget first: readers filter them until then
                    while self._yield_to_deletions(cat, stop) and maintenance.apply_deletes(self.out_dir, cat):
                        pass
                    while (self._yield_to_deletions(cat, stop)
                           and maintenance.merge_small_files(self.out_dir, cat, self.merge_min_files, max_groups=1)):
                        pass
                except CatalogConflict:
                    continue
                except LeaseLost:
                    log.info("the maintenance lease moved to another node during a merge")
                    self._drop_maintenance(cat)
                except Exception:  # noqa: BLE001 - logged, retried later
                    log.exception("merge failed; retrying later")
        finally:
            self._let_go(cat)

    @staticmethod
    def _yield_to_deletions(cat: Catalog, stop, most: float = 1.0) -> bool:
        """Before each merge: while a recent deletion waits for its step (``deletion_waiting``:
        the step rewrites its files, and plain readers see the trip until then), wait for it, up
        to ``most`` seconds, so that the step has the cores. False if the compactor is stopping."""
        end = time.monotonic() + most
        while not stop.is_set() and time.monotonic() < end and cat.deletion_waiting():
            stop.wait(0.05)
        return not stop.is_set()

    def _reconcile(self) -> int:
        """In a cluster, the hive tree is brought in step with the catalog now and then (a node
        that crashed between a commit and its links leaves the repair to the maintenance node)."""
        linked, unlinked = hive.reconcile(self.out_dir, self.catalog)
        return linked + unlinked

    def _maintain_safely(self) -> None:
        """Vacuum and the log cleaner each on their own: one failing does not stop the other,
        nor projection. Vacuum (every node's files) only in the maintenance lease's holder."""
        jobs = [("log cleaner", self.clean_log, "log_records_erased")]
        if self.maintaining.is_set():
            jobs.insert(0, ("vacuum", self.vacuum, "vacuumed"))
            if self.shared:
                jobs.append(("hive tree", self._reconcile, "relinked"))
        for name, job, what in jobs:
            try:
                n = job()
            except Exception:  # noqa: BLE001 - logged, retried at the next maintenance
                log.exception("%s failed; retrying at the next maintenance", name)
                continue
            if n:
                log.info("maintenance: %s=%d", what, n)

    def run_forever(self, stop, interval: float = 0.2, maintain_every: float = 30.0,
                    merge_every: float = 2.0, mirror_every: float | None = 5.0) -> None:  # lake.iceberg.EVERY_S
        """Project as records arrive. Small files are merged by a thread beside the projection
        (every ``merge_every`` seconds); vacuum and the log cleaner run every ``maintain_every``
        seconds, busy or not. A step that drained the log is followed by a pause of ``interval``
        (records gather into bigger, cheaper steps: fewer files and commits for at most
        ``interval`` more latency); a full step is not. The Iceberg mirror syncs every
        ``mirror_every`` seconds in its own process (None: no mirror)."""
        last_maint = time.monotonic()
        merger = threading.Thread(target=self._merge_loop, args=(stop, merge_every), name="merger", daemon=True)
        merger.start()
        # in a cluster the mirror runs beside the maintenance lease's holder only (one writer of
        # the Iceberg tables): started when this compactor takes the lease, stopped when it loses it
        mirror = None
        while not stop.is_set():
            if mirror_every and mirror is None and self.maintaining.is_set():
                mirror = self._start_mirror(mirror_every)
            elif mirror is not None and not self.maintaining.is_set():
                mirror = self._stop_mirror(mirror)
            try:
                s = self.step()
                if s.records:
                    log.debug("compacted %d records (%d stored, %d failed) in %.2fs (links %.2f ms)",
                              s.records, s.stored, s.failed, s.seconds, s.links_seconds * 1000)
                elif self.run_tasks_safely():
                    continue
                self.release_idle_workers()
                if time.monotonic() - last_maint > maintain_every:
                    last_maint = time.monotonic()  # a failing maintenance must not slow every step
                    self._maintain_safely()
                if s.records >= self.batch_records or s.seconds > interval:
                    continue  # a backlog: keep going
            except CatalogConflict as e:
                log.info("%s; planning the step again", e)
                continue
            except LeaseLost as e:
                log.warning("%s: this compactor is fenced off; waiting to take the partitions again", e)
                stop.wait(self.lease_ttl / 3)
                continue
            except LeaseHeld as e:
                log.warning("%s", e)
                stop.wait(self.lease_ttl / 3)
                continue
            except Isolating:
                continue  # at once: the next, smaller step does not fail the same way
            except Exception:
                log.exception("compaction step failed; retrying")
                stop.wait(5)
            stop.wait(interval)
        merger.join()
        if mirror is not None:
            self._stop_mirror(mirror)

    @staticmethod
    def _stop_mirror(mirror) -> None:
        """Stops it; returns None (no mirror any more)."""
        proc, mstop = mirror
        mstop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()

    def _start_mirror(self, every: float):
        """The Iceberg mirror's process (``lake.iceberg.mirror_process``), and its stop event.
        Its history is at most the retention: an older Iceberg snapshot could name files that
        vacuum deleted."""
        import multiprocessing as mp
        from . import iceberg
        ctx = mp.get_context("spawn")
        mstop = ctx.Event()
        history = min(iceberg.HISTORY_S, self.retention)
        proc = ctx.Process(target=iceberg.mirror_process, name="iceberg-mirror", daemon=True,
                           args=(str(self.out_dir), mstop, every, history,
                                 logging.getLogger().getEffectiveLevel()))
        proc.start()
        return proc, mstop

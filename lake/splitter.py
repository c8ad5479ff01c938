"""The projection processes: splitting trips (``lake.project.split_trips``) on every core.

Splitting a trip and decoding its route are most of its Python work, which one process's GIL
would serialise: a backlog's trips are split in worker processes (``forkserver``, one per core),
in chunks of ~4 MB of bodies whose routes come back as one Arrow IPC stream each; both ways
through shared-memory files when there is room (``lake.shm``), else the pipe. A small batch
is split in the calling process. A worker that dies is replaced and its batch split here; idle
workers are released (``release_idle``), and they exit as soon as their compactor is gone.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from ingest.log import write_all
from pushlake.procs import exit_with

from . import routes, shm
from .project import split_trips
from .routes import Routes

log = logging.getLogger("pushlake.compactor")

CHUNK_BYTES = 4 << 20  # a worker holds little at a time, and the chunks finish evenly


def _start_worker(owner: int, shm_dir: str | None) -> None:
    exit_with(owner)
    routes.share_through(shm_dir, owner)


def _split_shared(path: str, sizes: list[tuple[int, int]]):
    """In a projection process: ``split_trips`` over the (id, size) bodies the compactor wrote,
    one after another, in a shared-memory file (removed once read)."""
    try:
        with open(path, "rb") as f:
            data = memoryview(f.read())
    finally:
        shm.unlink(path)
    items, pos = [], 0
    for k, n in sizes:
        items.append((k, data[pos:pos + n]))
        pos += n
    return split_trips(items)


Parts = list[tuple[list, Routes]]


class Splitter:
    def __init__(self, workers: int | None = None, parallel_min_trips: int = 64):
        """``workers``: processes for batches of at least ``parallel_min_trips`` trips (default:
        one per core; 0 or 1: none, everything is split in this process)."""
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.parallel_min_trips = parallel_min_trips
        self._procs: ProcessPoolExecutor | None = None
        self.last_used = 0.0  # time.monotonic() of the last split in the workers
        self._bodies: set[str] = set()  # bodies files of the splits not collected yet

    @property
    def processes(self) -> list[int]:
        """The pids of the running worker processes (none until a backlog needs them)."""
        return [] if self._procs is None else list(self._procs._processes or ())

    def split(self, items: list[tuple[int, bytes]]) -> Callable[[], Parts]:
        """Start splitting these (id, body) trips; the function returned waits for the parts."""
        if self.workers < 2 or len(items) < self.parallel_min_trips:
            return lambda: [split_trips(items)]
        if self._procs is None:
            # forkserver: workers are not forked from this process, whose threads may hold locks
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["lake.project"])
            if shm.DIR is not None:
                shm.remove_orphans(shm.DIR)
            self._procs = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_start_worker,
                                              initargs=(os.getpid(), shm.DIR))
        chunks: list[list[tuple[int, bytes]]] = [[]]
        held = 0
        for it in items:
            if held >= CHUNK_BYTES:
                chunks.append([])
                held = 0
            chunks[-1].append(it)
            held += len(it[1])
        self.last_used = time.monotonic()
        procs = self._procs
        shared: list[str] = []
        try:
            futures = [self._submit(procs, c, shared) for c in chunks]
        except BrokenProcessPool:
            futures = None
        self._bodies.update(shared)

        def parts() -> Parts:
            try:
                if futures is not None:
                    return [f.result() for f in futures]
            except BrokenProcessPool:
                pass
            finally:
                self._unlink(shared)  # read and removed by their workers, unless one died first
            log.warning("a projection process died; splitting this batch here and starting new ones")
            procs.shutdown(wait=False, cancel_futures=True)
            if self._procs is procs:
                self._procs = None
            return [split_trips(items)]
        return parts

    @staticmethod
    def _submit(procs: ProcessPoolExecutor, chunk: list[tuple[int, bytes]], shared: list[str]):
        """Hand a chunk to a worker: its bodies in a shared-memory file (``lake.shm``), or
        through the pipe when there is none or it cannot take them."""
        if shm.DIR is not None:
            path = None
            try:
                path = shm.new_file(shm.DIR, "bodies", os.getpid())
                fd = os.open(path, os.O_WRONLY)
                try:
                    write_all(fd, [b for _, b in chunk])
                finally:
                    os.close(fd)
            except OSError:  # full, or not usable: the pipe
                if path is not None:
                    shm.unlink(path)
            else:
                shared.append(path)
                return procs.submit(_split_shared, path, [(k, len(b)) for k, b in chunk])
        return procs.submit(split_trips, chunk)

    def release_idle(self, after: float = 60.0) -> bool:
        """Stop the workers when no backlog has needed them for ``after`` seconds: a service that
        caught up should not keep them (and their memory) around."""
        if self._procs is None or time.monotonic() - self.last_used < after:
            return False
        self._procs.shutdown(wait=True)
        self._procs = None
        return True

    def _unlink(self, paths) -> None:
        for path in list(paths):
            shm.unlink(path)
            self._bodies.discard(path)

    def close(self) -> None:
        if self._procs is not None:
            self._procs.shutdown(wait=True, cancel_futures=True)
            self._procs = None
        self._unlink(self._bodies)  # the bodies of chunks cancelled before a worker read them

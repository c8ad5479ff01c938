"""Pipelined group commit: one fdatasync in flight, and every request that arrived meanwhile
rides the next one. The event loop never blocks on the disk; a single writer thread does the
write + fdatasync and then resolves the waiting requests; those whose ack also waits for a
publication (deletions: their tombstones in the catalog, ``on_durable``) are resolved by a second
thread once it is done, so that a catalog that is slow or down never holds back the log.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable, NamedTuple

from pushlake.metrics import M

from .log import LogWriter

log = logging.getLogger("pushlake.groupcommit")
PROBE_S = 1.0  # while publishing fails, how often it is tried again (deletions in between: 503 at once)
PUBLISH_TIMEOUT_S = 5.0  # a deletion waits this long at most for its publication (then 503)
MARK_S = 0.1  # resolution of received_at (the compactor's lag in seconds)



class Item(NamedTuple):
    """One push to make durable: what ``LogWriter.append`` writes as a record (which gets its
    offset there)."""
    kind: int
    received_us: int
    team: str
    key: str
    body: bytes


class Overloaded(Exception):
    """The bounded write queue is full: answer 503 and let the sender retry."""


class WriteFailed(Exception):
    """The batch could not be made durable (disk full, I/O error): nothing was acknowledged."""


class NotPublished(Exception):
    """The push is durable in the log but ``on_durable`` (publishing deletions' tombstones in the
    catalog) failed for its batch, and this push needs it: no ack (503), the client retries."""


class GroupCommit:
    def __init__(self, writer: LogWriter, on_durable: Callable[[int, list[Item]], None] | None = None,
                 max_pending: int = 20_000, max_pending_bytes: int = 256 << 20,
                 needs_sink: Callable[[Item], bool] | None = None):
        """``needs_sink``: which items' ack waits for ``on_durable`` (default: all). When
        ``on_durable`` fails, those get ``NotPublished`` and the others of the batch, durable, their
        offsets: a catalog outage refuses deletions only, not the trips riding the same fsync."""
        self.writer = writer
        self.on_durable = on_durable
        self.needs_sink = needs_sink or (lambda item: True)
        self.sink_down_since: float | None = None  # on_durable fails since (time.time()); logged once
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="log-writer")
        self._publisher = ThreadPoolExecutor(1, thread_name_prefix="tombstones")  # runs on_durable
        self._publishing: set[asyncio.Future] = set()
        self._next_probe = 0.0
        self._sink_error: Exception | None = None
        self._stalled = False  # a publication outlived PUBLISH_TIMEOUT_S (logged once)
        self._task: asyncio.Task | None = None
        self._roller: asyncio.Task | None = None
        self._closed = False
        self.batches = 0
        self.records = 0
        self._metrics = M()
        self._marks: deque[tuple[int, float]] = deque()  # (first offset of a batch, time.time())

    @property
    def publishing_hangs(self) -> bool:
        """A publication outlived PUBLISH_TIMEOUT_S and is still waiting for the catalog."""
        return self._stalled and bool(self._publishing)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._roller = asyncio.get_running_loop().create_task(self._roll_by_age())

    def full(self, nbytes: int = 0) -> bool:
        """Whether a request of ``nbytes`` would not fit in the queue: checked before a body is
        read too, so that an overloaded receiver does not buffer bodies only to refuse them."""
        return len(self._pending) >= self.max_pending or self._pending_bytes + nbytes > self.max_pending_bytes

    async def submit(self, item: Item) -> int:
        if self.full(len(item.body)):
            raise Overloaded()
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        self._pending_bytes += len(item.body)
        self._wake.set()
        return await fut

    def _publish(self, first: int, items: list[Item]) -> Exception | None:
        """``on_durable`` (on the publisher thread); its failure is returned. While it fails it is
        tried at most every ``PROBE_S``: the deletions in between are refused at once instead of
        queueing behind a catalog that may hang until its timeout."""
        if self.sink_down_since is not None and time.monotonic() < self._next_probe:
            return self._sink_error
        try:
            self.on_durable(first, items)
        except Exception as e:  # noqa: BLE001 - answered per item by _published
            self._next_probe, self._sink_error = time.monotonic() + PROBE_S, e
            if self.sink_down_since is None:
                self.sink_down_since = time.time()
                log.error("publishing deletions failed (%s: %s): deletions get 503 until it works again",
                          type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
            return e
        if self.sink_down_since is not None:
            log.warning("publishing deletions works again (after %.1f s)", time.time() - self.sink_down_since)
            self.sink_down_since = None
        return None

    def _too_slow(self, waiting: list[tuple[int, asyncio.Future]]) -> None:
        """No answer from the catalog within PUBLISH_TIMEOUT_S (it hangs): the deletions get 503
        now; their publication, still queued, is harmless if it happens later (their records are
        in the log, and the clients will push them again)."""
        if not self._stalled:
            self._stalled = True
            log.error("publishing deletions got no answer within %.0f s: deletions get 503 until it answers",
                      PUBLISH_TIMEOUT_S)
        for _, f in waiting:
            if not f.done():
                f.set_exception(NotPublished(f"no answer from the catalog within {PUBLISH_TIMEOUT_S:.0f} s"))

    def _published(self, first: int, waiting: list[tuple[int, asyncio.Future]], timer: asyncio.TimerHandle,
                   pub: asyncio.Future) -> None:
        timer.cancel()
        self._publishing.discard(pub)
        if pub.cancelled():
            error: BaseException | None = RuntimeError("publication cancelled")
        else:
            error = pub.exception() or pub.result()
        if error is None and self._stalled:
            self._stalled = False
            log.warning("publishing deletions answers again")
        for n, f in waiting:
            if not f.done():
                if error is not None:
                    f.set_exception(NotPublished(str(error)))
                else:
                    f.set_result(first + n)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending, self._pending_bytes = self._pending, [], 0
                items = [i for i, _ in batch]
                try:
                    first = await loop.run_in_executor(self._executor, self.writer.append, items)
                except Exception as e:  # noqa: BLE001 - every waiter must learn of the failure
                    log.error("log append failed, %d request(s) not acknowledged: %s", len(batch), e)
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(WriteFailed(str(e)))
                    continue
                self.batches += 1
                self.records += len(batch)
                self._measure(first, len(batch))
                # durable: the pushes that need no publication are acked now; the others when
                # the publisher thread has published their batch (in batch order), so a slow or
                # unreachable catalog delays deletions only, never the log's fsyncs
                waiting = []
                for n, (item, f) in enumerate(batch):
                    if self.on_durable is not None and self.needs_sink(item):
                        waiting.append((n, f))
                    elif not f.done():
                        f.set_result(first + n)
                if waiting and self._stalled and self._publishing:
                    # a publication hangs: refused at once rather than queued behind it
                    for _, f in waiting:
                        if not f.done():
                            f.set_exception(NotPublished("the catalog does not answer"))
                elif waiting:
                    pub = loop.run_in_executor(self._publisher, self._publish, first, items)
                    self._publishing.add(pub)
                    timer = loop.call_later(PUBLISH_TIMEOUT_S, self._too_slow, waiting)
                    pub.add_done_callback(partial(self._published, first, waiting, timer))

    def _measure(self, first: int, n: int) -> None:
        """The batch's metrics, and when its records arrived (``received_at``'s marks): at most
        one mark per ``MARK_S``, so a compactor stuck for hours costs a few thousand of them."""
        m = self._metrics
        m.fsync.observe(self.writer.last_sync_s)
        m.batch.observe(n)
        now = time.time()
        if not self._marks or now - self._marks[-1][1] >= MARK_S:
            self._marks.append((first, now))

    def received_at(self, offset: int) -> float | None:
        """About when the record at ``offset`` (of this receiver's partition) was received: the
        mark of its batch or the one before (``MARK_S`` early at most); None before this process.
        Marks below ``offset`` but the last one are dropped: the caller asks for the compactor's
        position, which only moves forward."""
        marks = self._marks
        while len(marks) > 1 and marks[1][0] <= offset:
            marks.popleft()
        if not marks or marks[0][0] > offset:
            return None
        return marks[0][1]

    async def _roll_by_age(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, max(self.writer.segment_age / 4, 0.05)))
            try:
                await loop.run_in_executor(self._executor, self.writer.maybe_roll)
            except OSError as e:
                log.error("segment roll failed: %s", e)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        while self._pending:
            await asyncio.sleep(0.01)
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)
        for t in (self._task, self._roller):
            if t is not None:
                t.cancel()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.writer.close)
        self._executor.shutdown(wait=True)
        self._publisher.shutdown(wait=True)
        close = getattr(self.on_durable, "close", None)  # a sink may hold connections: released
        if close is not None:
            close()

"""``pushlake serve``: receiver worker(s) and the compactor, supervised together.

With one worker the receiver runs in this process and the compactor in a child process, so
the CPU-heavy projection never delays an acknowledgement. With ``--workers N`` each receiver is
its own process on the same port (SO_REUSEPORT) writing its own log partition ``pN`` (``<node>.pN``
on a named node). The catalog, the lake and the node name reach every child through the
environment (``pushlake.location``, set by the CLI before anything starts). Children
die with the parent (PR_SET_PDEATHSIG), so a SIGKILL of ``serve`` leaves no orphan holding the
port or a log partition.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
from dataclasses import replace

from aiohttp import web

from .config import Settings
from .db import redact
from .location import catalog_url, lake_url
from .procs import die_with_parent

log = logging.getLogger("pushlake.serve")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def event_loop_factory():
    """uvloop when installed (a dependency): the same aiohttp code, ~25 % more requests per core."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_receiver(settings: Settings, partition: int, reuse_port: bool) -> None:
    from pushlake.api import make_app
    app = make_app(settings, partition)
    factory = event_loop_factory()
    loop = factory() if factory else None
    web.run_app(app, host=settings.host, port=settings.port, reuse_port=reuse_port or None,
                print=None, access_log=None, handle_signals=True, loop=loop)


def _receiver_child(settings: Settings, partition: int) -> None:
    die_with_parent()
    setup_logging()
    run_receiver(settings, partition, reuse_port=True)


def _compactor_child(settings: Settings) -> None:
    die_with_parent()
    setup_logging()
    from lake.compactor import Compactor, CompactorBusy
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    while not stop.is_set():
        try:
            c = Compactor(settings.data_dir, retention_days=settings.retention_days, recover=False)
        except CompactorBusy:
            log.warning("another compactor holds the lock (pushlake compact?); waiting for it")
            stop.wait(2)
            continue
        with c:
            c.run_forever(stop, interval=settings.compact_interval_s,
                          maintain_every=settings.maintenance_interval_s,
                          mirror_every=settings.iceberg_interval_s or None)


class Supervisor:
    """Keeps the child processes running: a compactor or receiver that dies is started again
    (and logged), so the service never acknowledges pushes while nothing projects them."""

    def __init__(self, specs: list[tuple[str, object, tuple]]):
        self.ctx = mp.get_context("spawn")
        self.specs = specs
        self.children: dict[str, mp.Process] = {}
        self.stopping = threading.Event()

    def start(self) -> None:
        for name, target, args in self.specs:
            self._spawn(name, target, args)
        threading.Thread(target=self._watch, name="supervisor", daemon=True).start()

    def _spawn(self, name: str, target, args: tuple) -> None:
        p = self.ctx.Process(target=target, args=args, name=name)
        p.start()
        self.children[name] = p

    def _watch(self) -> None:
        while not self.stopping.wait(1.0):
            for name, target, args in self.specs:
                p = self.children[name]
                if not p.is_alive() and not self.stopping.is_set():
                    log.error("%s exited (code %s); starting it again", name, p.exitcode)
                    self._spawn(name, target, args)

    def stop(self) -> None:
        self.stopping.set()
        for p in self.children.values():
            if p.is_alive():
                p.terminate()
        for p in self.children.values():
            p.join(10)
            if p.is_alive():
                p.kill()


def serve(settings: Settings) -> None:
    specs: list[tuple[str, object, tuple]] = []
    if settings.compactor:
        specs.append(("compactor", _compactor_child, (settings,)))
    if settings.workers > 1:
        specs += [(f"receiver-{i}", _receiver_child, (replace(settings), i)) for i in range(settings.workers)]
    sup = Supervisor(specs)
    sup.start()
    log.info("pushlake listening on http://%s:%d (data %s, node %s, catalog %s, lake %s, %d worker(s), "
             "compactor %s)", settings.host, settings.port, settings.data_dir, settings.node or "(none)",
             redact(catalog_url() or "") or "embedded SQLite", lake_url() or "under the data directory",
             settings.workers, "on" if settings.compactor else "off")
    try:
        if settings.workers > 1:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *a: stop.set())
            signal.signal(signal.SIGINT, lambda *a: stop.set())
            stop.wait()
        else:
            run_receiver(settings, 0, reuse_port=False)
    finally:
        sup.stop()

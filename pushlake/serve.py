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

from ingest.log import partition_name

from . import logs, metrics
from .config import Settings
from .db import redact
from .location import catalog_url, lake_url
from .procs import die_with_parent

log = logging.getLogger("pushlake.serve")
# the compactor's niceness, inherited by its projection workers and Iceberg mirror: when the
# cores are short, acknowledgements win them (a 170 KB-trip flood on 2 cores: 25-30 % more acks,
# p99 -35 %, bench/README.md); queries run at 10, below it. The environment variable overrides it (0: none)
COMPACTOR_NICE = 5
NICE_ENV = "PUSHLAKE_COMPACTOR_NICE"


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    logs.setup(fmt, level)


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

    def bound(_aiohttp_banner: str) -> None:  # run_app calls it once every site is listening
        log.info("receiver %s listening on http://%s:%d", partition_name(partition), settings.host, settings.port)
    web.run_app(app, host=settings.host, port=settings.port, reuse_port=reuse_port or None,
                print=bound, access_log=logs.ACCESS_LOGGER if settings.access_log else None,
                access_log_class=logs.AccessLog, handle_signals=True, loop=loop)


def _receiver_child(settings: Settings, partition: int) -> None:
    die_with_parent()
    setup_logging(settings.log_format)
    run_receiver(settings, partition, reuse_port=True)


def _compactor_child(settings: Settings) -> None:
    die_with_parent()
    setup_logging(settings.log_format)
    try:
        os.nice(int(os.environ.get(NICE_ENV) or COMPACTOR_NICE))
    except (OSError, ValueError) as e:
        log.warning("compactor niceness not set (%s=%r): %s", NICE_ENV, os.environ.get(NICE_ENV), e)
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
                    metrics.process_dead(p.pid)
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
    """Runs until SIGTERM/SIGINT. ``metrics.enable`` comes first: every process started after it
    (and this one) writes its metrics where ``GET /metrics`` gathers them."""
    metrics.enable(settings.data_dir)
    specs: list[tuple[str, object, tuple]] = []
    if settings.compactor:
        specs.append(("compactor", _compactor_child, (settings,)))
    if settings.workers > 1:
        specs += [(f"receiver-{i}", _receiver_child, (replace(settings), i)) for i in range(settings.workers)]
    sup = Supervisor(specs)
    sup.start()
    stop_history = threading.Event()
    threading.Thread(target=_history, args=(settings.data_dir, stop_history), name="history", daemon=True).start()
    log.info("pushlake starting on port %d (data %s, node %s, catalog %s, lake %s, %d worker(s), compactor %s)",
             settings.port, settings.data_dir, settings.node or "(none)",
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
        stop_history.set()
        sup.stop()


def _history(data_dir, stop: threading.Event) -> None:
    """The status page's time series (``pushlake.history``), sampled by the supervisor: one
    writer whatever the number of receivers."""
    try:
        from pushlake import history
    except ImportError:  # not there yet
        return
    try:
        history.run(data_dir, stop)
    except Exception:  # noqa: BLE001 - the status page's history is never worth the service
        log.exception("the status page's history stopped")

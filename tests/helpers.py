"""Test helpers: fixture bodies, generated trips, and a subprocess pushlake server."""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # copies of shared/fixtures
ROOT = Path(__file__).resolve().parent.parent
PUSHLAKE = [sys.executable, "-m", "pushlake.cli"]


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture(name: str) -> dict:
    return json.loads(fixture_bytes(name))


def trip(itin: str, user: str = "driver-1", start: str = "2025-01-20T21:46:01.000+0000", **overrides) -> dict:
    """A small trip (10 samples) with its own id, driver and start date."""
    t = copy.deepcopy(fixture("trip_small.json"))
    t["itinId"] = itin
    t["userId"] = user
    t["itineraryData"]["startDate"] = start
    for k, v in overrides.items():
        t[k] = v
    return t


def deletion(itin: str) -> dict:
    return {"itinId": itin, "event": "TRIP_DELETION", "date": "2025-02-01T09:12:47.000+0000"}


def itin_id(n: int) -> str:
    return f"{n:024x}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, data: Path | None = None, check: bool = True, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [*PUSHLAKE, *args] + (["--data", str(data)] if data is not None else [])
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def create_team(data: Path, team: str) -> str:
    out = run_cli("teams", "create", team, "--json", data=data)
    return json.loads(out.stdout)["pushApiKey"]


class ServerProcess:
    """``pushlake serve`` in a subprocess on a loopback port, for crash tests."""

    def __init__(self, data: Path, *extra: str, env: dict | None = None):
        self.data = data
        self.port = free_port()
        self.log = open(data.parent / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [*PUSHLAKE, "serve", "--data", str(data), "--port", str(self.port), "--min-free", "0", *extra],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).read()
                return
            except urllib.error.HTTPError:
                return  # up, and degraded (e.g. its compactor is failing): what some tests want
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {self.output()}")
                time.sleep(0.05)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

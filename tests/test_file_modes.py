"""A data directory holds every team's data: after a real ``serve`` + pushes + compaction +
maintenance + a torn-tail recovery, everything in it is owner-only (directories 0700, files
0600), and the directory an older pushlake left 0755 is tightened at ``serve`` start."""
from __future__ import annotations

import json
import os
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from ingest.log import LogWriter, list_segments
from lake.catalog import Catalog
from pushlake.teams import Teams
from tests.helpers import ServerProcess, create_team, fixture_bytes, itin_id, run_cli, trip


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of root and everything under it (files may come and go
    while a server runs)."""
    out = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d) / name
            try:
                out[str(p.relative_to(root))] = stat.S_IMODE(os.lstat(p).st_mode)
            except FileNotFoundError:
                pass
    return out


def too_open(found: dict[str, int]) -> dict[str, str]:
    return {p: f"{m:04o}" for p, m in found.items() if m & 0o077}


def push(url: str, kind: str, body: bytes, key: str) -> int:
    req = urllib.request.Request(f"{url}/push/{kind}", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_everything_in_a_served_data_dir_is_owner_only(tmp_path):
    old = os.umask(0o022)  # what a pushlake before this change created with: 0755 and 0644
    try:
        data = tmp_path / "data"
        data.mkdir(mode=0o755)
        assert stat.S_IMODE(data.stat().st_mode) == 0o755
        key = create_team(data, "acme")
        # two receivers: spawned processes, as is the compactor; all get the umask of `serve`
        srv = ServerProcess(data, "--segment-bytes", "8192", "--retention", "0", "--workers", "2")
        try:
            assert "was 0755: made it 0700" in srv.output()
            seen: set[str] = set()

            def both_receivers_up() -> bool:  # each new connection may land on either
                try:
                    with urllib.request.urlopen(srv.url + "/health", timeout=10) as r:
                        body = r.read()
                except urllib.error.HTTPError as e:  # 503 while degraded says its partition too
                    body = e.read()
                seen.add(json.loads(body)["partition"])
                return seen == {"p0", "p1"}
            wait_for(both_receivers_up)
            for i in range(12):
                assert push(srv.url, "trip", orjson.dumps(trip(itin_id(i))), key) == 200
            assert push(srv.url, "trip/event", orjson.dumps({"itinId": itin_id(0), "event": "TRIP_DELETION"}), key) == 200
            assert push(srv.url, "crash", fixture_bytes("crash.json"), key) == 200
            assert push(srv.url, "diagnosis", fixture_bytes("diagnosis.json"), key) == 200
            form = f"grant_type=client_credentials&client_id=acme&client_secret={key}".encode()
            urllib.request.urlopen(urllib.request.Request(f"{srv.url}/oauth/token", data=form), timeout=10).read()

            def compacted() -> bool:
                cat = Catalog(data, readonly=True)
                try:
                    return sum(1 for f in cat.live_files("trips")) > 0 and sum(cat.positions().values()) >= 15
                finally:
                    cat.close()
            wait_for(compacted)
            running = modes(data)  # with the databases' -wal and -shm files open
        finally:
            srv.stop()
        assert any(p.endswith("catalog.db-wal") for p in running) and any(p.endswith("admin.db-shm") for p in running)
        # a torn tail, recovered by the next compaction (the torn bytes are kept aside)
        seg = [s for part in ("p0", "p1") for _, s in list_segments(data / "log" / part)][-1]
        with open(seg, "ab") as f:
            f.write(b"\x00\x01torn")
        run_cli("compact", "--retention", "0", data=data)  # projection, merge, vacuum, log cleaning
        run_cli("erase", "--now", itin_id(0), data=data)
        after = modes(data)
    finally:
        os.umask(old)

    for found in (running, after):
        assert too_open(found) == {}
    everything = {**running, **after}
    names = {Path(p).name for p in everything}
    for expected in ("catalog.db", "admin.db", "enterprise.key", "oauth.secret", "compactor.lock", ".lock",
                     ".durable", "catalog.db-wal", "catalog.db-shm", "admin.db-wal", "admin.db-shm"):
        assert expected in names, expected
    kinds = {".log": 0, ".parquet": 0, ".trips": 0, "torn": 0}
    for p in everything:
        for k in kinds:
            kinds[k] += k in Path(p).name
    assert all(kinds.values()), kinds  # segments, Parquet files, cleaner indexes, the torn tail
    for p, m in everything.items():
        full = data / p
        if full.is_dir():
            assert m == 0o700, (p, oct(m))
        elif full.exists():
            assert m == 0o600, (p, oct(m))
    assert {"log/p0", "log/p1"} <= set(after)
    lake_dirs = [p for p in after if p.startswith("lake/") and (data / p).is_dir()]
    assert any("team=acme" in p for p in lake_dirs) and any("date=" in p for p in lake_dirs)


def test_library_writers_use_owner_only_modes_whatever_the_umask(tmp_path):
    """Code that embeds the log writer or the stores (tests, scripts) gets the same modes for the
    files they create with explicit modes: the log, its markers, the databases."""
    old = os.umask(0o022)
    try:
        data = tmp_path / "data"
        t = Teams(data)
        t.create("acme")
        w = LogWriter(data, 0, segment_bytes=1)
        w.append([(1, 1, "acme", itin_id(1), orjson.dumps(trip(itin_id(1))))])
        w.close()
        seg = list_segments(data / "log" / "p0")[-1][1]
        with open(seg, "ab") as f:
            f.write(b"\x00torn")
        LogWriter(data, 0).close()  # recovery copies the torn tail aside
        cat = Catalog(data)
        found = modes(data)
        cat.close()
        t.close()
    finally:
        os.umask(old)
    assert any("torn" in p for p in found) and any(p.endswith("catalog.db-wal") for p in found)
    assert too_open(found) == {}, json.dumps(too_open(found))


def test_lake_files_are_owner_only_whatever_the_umask_of_the_embedding_process(tmp_path):
    """Code that embeds the compactor (no ``pushlake`` main, so no umask 077) still writes
    owner-only Parquet files, partition directories and merged files."""
    import pyarrow as pa
    from lake import files as lf
    from lake.schema import SCHEMAS
    old = os.umask(0o022)
    try:
        t = pa.Table.from_pylist([{"crash_id": "c1", "team_id": "acme"}], schema=SCHEMAS["crashes"])
        a = lf.write_file(tmp_path, "crashes", "acme", "2025-01-20", t)
        b = lf.write_file(tmp_path, "crashes", "acme", "2025-01-20", t)
        m = lf.merge_files(tmp_path, "crashes", "acme", "2025-01-20", [a.path, b.path])
    finally:
        os.umask(old)
    for f in (a, b, m):
        assert stat.S_IMODE((tmp_path / f.path).stat().st_mode) == 0o600, f.path
    d = tmp_path / a.path
    while d.parent != tmp_path:
        d = d.parent
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d

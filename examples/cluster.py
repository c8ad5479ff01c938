"""A three-node pushlake cluster on this machine, to try scale-out by hand (`make cluster`).

Starts a PostgreSQL server (the shared catalog), moto_server (an S3-compatible object store for
the lake) and three ``pushlake serve --node nK`` processes on loopback ports, each with its own
data directory (its log), creates a team, then prints the exact commands to push to each node
and to query the lake from a fourth place (an empty data directory: only the catalog and the
lake). Ctrl-C stops everything.

Files go to ``$CLUSTER_DIR`` (kept afterwards, with each node's log file) or to a temporary
directory (removed at the end). The servers are the test suite's (tests/services.py): test
settings (PostgreSQL without fsync, trust authentication on loopback, moto keeping objects in
memory), so everything here is thrown away when it stops. `docs/scale-out.md` describes a real
deployment.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster import Node  # noqa: E402  (the repository's own modules, from its root)
from tests.services import ServiceUnavailable, started  # noqa: E402

NODES = ("n1", "n2", "n3")
TEAM = "demo"
BUCKET = "pushlake"
PUSHLAKE = Path(sys.executable).parent / "pushlake"  # the venv's command


def _stop_on(signum, frame):
    raise KeyboardInterrupt


def _shell_env(env: dict[str, str]) -> str:
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def run(base: Path) -> None:
    with started("postgres") as pg, started("s3") as s3:
        catalog = pg.url  # the database `pushlake`, created empty with the server
        lake = f"s3://{s3.bucket(BUCKET)}/lake"
        aws = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.access_key,
               "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_REGION": s3.region}
        enterprise_key = os.urandom(24).hex()  # one key for every node's enterprise API
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PUSHLAKE_"))}
        env.update(aws, PUSHLAKE_ENTERPRISE_KEY=enterprise_key)

        admin = base / "admin"
        p = subprocess.run([str(PUSHLAKE), "teams", "create", TEAM, "--json", "--data", str(admin)],
                           env={**env, "PUSHLAKE_CATALOG": catalog, "PUSHLAKE_LAKE": lake},
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise SystemExit(f"cluster: creating team {TEAM} failed: {p.stderr.strip()}")
        keys = json.loads(p.stdout)

        nodes = []
        for name in NODES:
            data = base / name / "data"
            data.mkdir(parents=True, exist_ok=True)
            nodes.append(Node(name, data, ["--catalog", catalog, "--lake", lake], env, base))
        try:
            for n in nodes:
                n.start()
            for n in nodes:
                n.wait_up()
            reader = base / "reader"
            reader.mkdir(exist_ok=True)
            trip = ROOT / "tests" / "fixtures" / "trip_small.json"
            deletion = ROOT / "tests" / "fixtures" / "deletion.json"
            auth = f"-H {shlex.quote('Authorization: Bearer ' + keys['pushApiKey'])} -H 'Content-Type: application/json'"
            print(f"pushlake cluster in {base}")
            print(f"  catalog  {catalog}  (PostgreSQL)")
            print(f"  lake     {lake}  (S3 at {s3.endpoint})")
            for n in nodes:
                print(f"  node {n.name}  {n.url}  data {n.data}  log {n.log_path}")
            print(f"  team {TEAM}: pushApiKey {keys['pushApiKey']}  adminApiKey {keys['adminApiKey']}")
            print(f"  enterprise API key (every node): {enterprise_key}")
            print()
            print("Push a trip to each node:")
            for n in nodes:
                print(f"  $ curl {auth} --data-binary @{shlex.quote(str(trip))} {n.url}/push/trip")
            print("Delete it through another node (invisible to every reader from this 200):")
            print(f"  $ curl {auth} --data-binary @{shlex.quote(str(deletion))} {nodes[1].url}/push/trip/event")
            print("Query from a fourth place (an empty data directory; only the catalog and the lake):")
            sql = "SELECT itin_id, user_id, log_part, received_at FROM trips"
            print(f"  $ {_shell_env(aws)} {shlex.quote(str(PUSHLAKE))} sql --catalog {shlex.quote(catalog)} "
                  f"--lake {shlex.quote(lake)} --data {shlex.quote(str(reader))} {shlex.quote(sql)}")
            print()
            print("Ctrl-C stops the three nodes, moto_server and PostgreSQL.", flush=True)
            while True:
                for n in nodes:
                    if not n.running():
                        print(f"cluster: node {n.name} exited ({n.proc.returncode}); see {n.log_path}",
                              file=sys.stderr, flush=True)
                        raise KeyboardInterrupt
                time.sleep(0.5)
        finally:
            for n in nodes:
                n.stop()


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on)
    given = os.environ.get("CLUSTER_DIR")
    base = Path(given) if given else Path(tempfile.mkdtemp(prefix="pushlake-cluster-"))
    base.mkdir(parents=True, exist_ok=True)
    os.umask(0o077)
    try:
        run(base)
    except KeyboardInterrupt:
        print("\ncluster: stopped", flush=True)
    except ServiceUnavailable as e:
        print(f"cluster: {e}", file=sys.stderr)
        return 1
    finally:
        if not given:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Settings shared by the receiver, the compactor and the CLI."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Settings:
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    retention_days: float = 7.0
    max_body_bytes: int = 32 << 20
    min_free_bytes: int = 256 << 20
    max_pending_requests: int = 20_000
    max_pending_bytes: int = 256 << 20
    segment_bytes: int = 128 << 20
    segment_age_s: float = 600.0
    compact_interval_s: float = 0.2
    iceberg_interval_s: float = 5.0        # the Iceberg mirror's sync interval (0: no mirror)
    maintenance_interval_s: float = 30.0   # vacuum and the log cleaner run this often
    compactor: bool = True
    node: str = ""                         # this node's name (pushlake.location.node_name); "" on one machine
    max_teams: int = 100
    max_hyperadmins: int = 10
    token_ttl_s: int = 3600
    query_timeout_s: float = 30.0
    query_max_rows: int = 100_000
    query_memory_limit: str = "1GB"
    query_max_bytes: int = 64 << 20        # a result body beyond it is cut (JSON: truncated: true)
    query_workers: int = 6                 # queries and exports running at once, per receiver process
    query_per_team: int = 2                # of which one team (or one hyper-admin) may hold
    query_write_timeout_s: float = 30.0    # a client that reads nothing for this long is cut off
    password_checks: int = 16              # scrypt checks queued at once (beyond: 503)
    password_max_failures: int = 5         # failed checks of one user before it is slowed down
    health_max_lag_s: float = 300.0        # /health is degraded when a record waits longer to be projected
    log_format: str = "text"               # text | json (pushlake.logs), in every process of serve
    access_log: bool = False               # one line per request (pushlake.access)


def enterprise_key(data_dir: Path) -> tuple[str, bool]:
    """The enterprise API key: ``PUSHLAKE_ENTERPRISE_KEY`` or ``data/enterprise.key`` (created
    on first start, mode 0600). Returns (key, created_now)."""
    env = os.environ.get("PUSHLAKE_ENTERPRISE_KEY")
    if env:
        return env, False
    path = Path(data_dir) / "enterprise.key"
    if path.exists():
        return path.read_text().strip(), False
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    key = "ek_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key, True

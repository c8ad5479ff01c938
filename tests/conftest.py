from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from ingest.app import build_app
from lake.receiver import ReceiverLake
from lake.compactor import Compactor
from pushlake.config import Settings
from pushlake.teams import Teams
# one PostgreSQL and one S3 server for the whole session (a fixture imported by each test module
# would be one fixture per module, so one server per module)
from tests.services import postgres, s3  # noqa: F401


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def teams(data: Path):
    t = Teams(data)
    yield t
    t.close()


@pytest.fixture
def acme(teams: Teams) -> dict:
    return teams.create("acme")


@pytest.fixture
def globex(teams: Teams) -> dict:
    return teams.create("globex")


def settings(data: Path, **kw) -> Settings:
    return Settings(data_dir=data, **{"min_free_bytes": 0, "segment_age_s": 3600, **kw})


class Pusher:
    """A real HTTP client on a real loopback server, with the team's credentials."""

    def __init__(self, client, key: str, team: str):
        self.client = client
        self.key = key
        self.team = team

    async def push(self, kind: str, body, *, headers: dict | None = None, auth: str | None = "bearer",
                   raw: bytes | None = None):
        h = {"Content-Type": "application/json"}
        if auth == "bearer":
            h["Authorization"] = f"Bearer {self.key}"
        elif auth == "basic":
            h["Authorization"] = "Basic " + base64.b64encode(f"{self.team}:{self.key}".encode()).decode()
        h.update(headers or {})
        payload = raw if raw is not None else orjson.dumps(body)
        resp = await self.client.post(f"/push/{kind}", data=payload, headers=h)
        return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def make_pusher(aiohttp_client, data: Path):
    clients: list = []

    async def make(team: dict, **kw) -> Pusher:
        """One server per test (it owns the log partition); each team gets its own Pusher."""
        if not clients:
            clients.append(await aiohttp_client(build_app(settings(data, **kw), lake=ReceiverLake(data))))
        return Pusher(clients[0], team["pushApiKey"], team["teamId"])
    return make


@pytest.fixture
async def pusher(make_pusher, acme) -> Pusher:
    return await make_pusher(acme)


def compact(data: Path, apply_deletes: bool = True, **kw):
    """Drain the log into the lake; return the stats and the FAILED items."""
    with Compactor(data, **kw) as c:
        stats = c.drain(apply_deletes=apply_deletes)
        return stats, c.catalog.failed_items()

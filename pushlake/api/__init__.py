"""The HTTP application: the push receiver plus OAuth2, the enterprise administration API,
team-scoped reads and the OpenAPI document. Every route is in ``routes.ROUTES``."""
from __future__ import annotations

from aiohttp import web

from ingest.app import build_app
from lake.receiver import ReceiverLake
from pushlake.config import Settings

from . import auth, enterprise, reads, routes


def make_app(settings: Settings, partition: int = 0) -> web.Application:
    app = build_app(settings, partition, lake=ReceiverLake(settings.data_dir))  # the receiver: routes.RECEIVER
    auth.setup(app)
    enterprise.setup(app)
    reads.setup(app)
    routes.register(app, routes.API)
    return app

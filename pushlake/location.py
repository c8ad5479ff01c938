"""Where a pushlake deployment keeps its three things: the node's log (``--data``), the catalog
(``--catalog`` / ``PUSHLAKE_CATALOG``) and the lake's Parquet (``--lake`` / ``PUSHLAKE_LAKE``),
and the node's name (``--node`` / ``PUSHLAKE_NODE``).

One place answers, for every process: the CLI sets the environment variables from its options
before it starts anything, so the receivers, the compactor, the query processes and the Iceberg
mirror (children that inherit the environment) all open the same catalog and the same lake. A
component that opened the embedded SQLite catalog while the others use PostgreSQL would be a
split brain; with one resolution point it cannot happen. Code that must choose explicitly (the
tests of both backends) passes ``url=`` to the stores (``""`` means the embedded SQLite file).

The embedded default — no variable set — is the single-machine product: SQLite in ``--data``,
Parquet under ``--data``, no node name (partitions ``p0``, ``p1``…).

The lowest layer: it imports nothing of pushlake's.
"""
from __future__ import annotations

import os
import re
import socket

CATALOG_ENV, LAKE_ENV, NODE_ENV = "PUSHLAKE_CATALOG", "PUSHLAKE_LAKE", "PUSHLAKE_NODE"
# a node's name is part of its log partitions' names (``<node>.p0``), which the catalog records
NODE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")


def catalog_url(explicit: str | None = None) -> str | None:
    """The catalog's URL (``postgresql://…``), or None for the embedded SQLite catalog.
    ``explicit`` wins when not None; ``""`` means SQLite whatever the environment says."""
    if explicit is not None:
        return explicit or None
    return os.environ.get(CATALOG_ENV) or None


def lake_url(explicit: str | None = None) -> str | None:
    """The lake's URL (``s3://bucket/prefix``), or None for Parquet under the data directory."""
    if explicit is not None:
        return explicit or None
    return os.environ.get(LAKE_ENV) or None


def shared() -> bool:
    """Several machines may meet in this catalog (it is not the embedded SQLite file)."""
    return catalog_url() is not None


def node_name(explicit: str | None = None) -> str:
    """This node's name: ``--node`` / ``PUSHLAKE_NODE``; with a shared catalog the host name
    by default (nodes sharing a catalog need distinct names); on the embedded default none (``""``:
    partitions stay ``p0``…)."""
    name = explicit if explicit is not None else os.environ.get(NODE_ENV)
    if name is None:
        if not shared():
            return ""
        name = socket.gethostname().split(".")[0].lower()
        name = re.sub(r"[^a-z0-9-]", "-", name).strip("-")[:40] or "node"
    if name and not NODE_NAME.fullmatch(name):
        raise ValueError(f"invalid node name {name!r}: lowercase letters, digits and '-', at most 40, "
                         "starting and ending with a letter or digit")
    return name


def export(catalog: str | None = None, lake: str | None = None, node: str | None = None) -> None:
    """Make the CLI's options the environment of this process and of every child it starts."""
    for env, value in ((CATALOG_ENV, catalog), (LAKE_ENV, lake), (NODE_ENV, node)):
        if value is not None:
            if value:
                os.environ[env] = value
            else:
                os.environ.pop(env, None)

"""A no-op aiohttp server: the baseline for ``bench/ingest_bench.py``.

It does the least any aiohttp push receiver must do (accept the connection, read the whole
body, answer a small JSON 200), so the gap between it and pushlake is the cost of pushlake's own
work: authentication, the key check, the durable group commit. ``GET /health`` exists only so
the benchmark can tell when the server is up.
"""
from __future__ import annotations

import argparse

from aiohttp import web

OK_BODY = b'{"status":"OK"}'


async def push(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=OK_BODY, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(body=OK_BODY, content_type="application/json")


def build_app(max_body: int) -> web.Application:
    app = web.Application(client_max_size=max_body)
    app.router.add_get("/health", health)
    app.router.add_post("/{tail:.*}", push)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--reuse-port", action="store_true", help="share the port with sibling processes")
    ap.add_argument("--max-body", type=int, default=32 << 20, metavar="BYTES")
    a = ap.parse_args()
    try:  # the same event loop as pushlake serve, so the ratio compares handlers, not loops
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(build_app(a.max_body), host=a.host, port=a.port, reuse_port=a.reuse_port or None,
                print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()

"""One line per event on stderr, as text for people or as JSON for log shippers (``--log-format``).

Every process of ``pushlake serve`` sets its logging up with the same format (the children get it
in their ``Settings``). The fields a line carries besides its message (a refused push's team,
route, status, code and reason; an access line's method, path, status, size and duration) are
given as ``extra=`` and become keys of the JSON object; the text format shows them in the
message already.
"""
from __future__ import annotations

import datetime as dt
import logging
import sys

import orjson
from aiohttp.abc import AbstractAccessLogger

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
# what every LogRecord has: anything else on a record came from ``extra=``
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "pid": record.process,
               "message": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STANDARD and k not in doc:
                doc[k] = v
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    """Replaces the root logger's handlers (a child process starts from its parent's setup)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's own access logger stays quiet: ours (AccessLog, with --access-log) writes the lines
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class AccessLog(AbstractAccessLogger):
    """One line per request (``--access-log``), with its fields for JSON; credentials never show
    (the path and the status only, no headers)."""

    def log(self, request, response, time: float) -> None:
        remote = request.remote or "-"
        self.logger.info("%s %s %s %d %d %.1fms", remote, request.method, request.path_qs, response.status,
                         response.body_length, time * 1000,
                         extra={"remote": remote, "method": request.method, "path": request.path,
                                "status": response.status, "bytes": response.body_length,
                                "duration_ms": round(time * 1000, 3)})

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


ACCESS_LOGGER = logging.getLogger("pushlake.access")

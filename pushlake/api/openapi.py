"""``GET /openapi.json`` and ``GET /docs``: the API described, and a test keeps it true.

``document()`` builds the OpenAPI 3.1 document from the route table (``routes.ROUTES``: paths,
operations, parameters, responses and their error codes), the body structs (``bodies.py``, whose
schemas msgspec generates) and the push body schemas (``pushbodies.py``, from the lake's field
lists). What is written here is what exists nowhere else: the document's prose, the security
schemes and the response headers. ``/docs`` renders the document server-side into one
self-contained HTML page (no script, no CDN). ``tests/test_openapi.py`` checks the app, the table
and the document against each other, and real answers against the schemas.
"""
from __future__ import annotations

import functools
import html
import re
import urllib.parse

import msgspec
import orjson
from aiohttp import web

from pushlake import __version__

from . import pushbodies
from .bodies import DQ_DATE

REF = "#/components/schemas/{name}"

SECURITY_SCHEMES = {
    "pushBearer": {"type": "http", "scheme": "bearer",
                   "description": "`Authorization: Bearer <pushApiKey>` (the team's push key, `pk_...`) or "
                                  "`Bearer <access_token>` (`at_...`, from `POST /oauth/token`)."},
    "pushBasic": {"type": "http", "scheme": "basic",
                  "description": "`Authorization: Basic base64(teamId:pushApiKey)`."},
    "oauth2": {"type": "oauth2",
               "description": "OAuth2 client credentials (RFC 6749 §4.4): client id = teamId, client secret = "
                              "pushApiKey. The token is sent as `Authorization: Bearer <access_token>`; it is "
                              "refused once the team is disabled or its keys are re-issued.",
               "flows": {"clientCredentials": {"tokenUrl": "/oauth/token", "scopes": {}}}},
    "enterpriseKey": {"type": "apiKey", "in": "header", "name": "x-dq-enterprise-api-key",
                      "description": "The enterprise API key: `PUSHLAKE_ENTERPRISE_KEY`, or `data/enterprise.key` "
                                     "(created at first start). Compared in constant time."},
    "enterpriseBearer": {"type": "http", "scheme": "bearer",
                         "description": "`Authorization: Bearer <enterprise key>` (or Basic `enterprise:<enterprise "
                                        "key>`): the operators' pages, e.g. Prometheus' `authorization` setting."},
    "adminBearer": {"type": "http", "scheme": "bearer",
                    "description": "`Authorization: Bearer <adminApiKey>` (`ak_...`): reads that team's data only."},
    "hyperadminBasic": {"type": "http", "scheme": "basic",
                        "description": "`Authorization: Basic base64(userId:password)` of a hyper-admin: reads "
                                       "every team (or one, with `teamId`)."},
}

# response headers, by name (a route's responses name them); components.headers drops the dashes
HEADERS = {
    "Retry-After": {"description": "Seconds to wait before retrying (1 when overloaded or a reader is at its limit, "
                                   "what remains of the backoff after failed password checks, 30 after a write "
                                   "error, 60 when the disk is full).", "schema": {"type": "integer"}},
    "WWW-Authenticate": {"description": "The authentication challenge.", "schema": {"type": "string"}},
    "Cache-Control": {"description": "`no-store`: tokens and token errors are never cached.",
                      "schema": {"type": "string"}},
    "Pragma": {"description": "`no-cache`.", "schema": {"type": "string"}},
    "X-Pushlake-Rows": {"description": "Rows in the result (or in the export).", "schema": {"type": "integer"}},
    "X-Pushlake-Truncated": {"description": "`true` when the result was cut at the row limit.",
                             "schema": {"type": "string", "enum": ["true", "false"]}},
    "Content-Disposition": {"description": "`attachment; filename=\"<table>.<format>\"`.",
                            "schema": {"type": "string"}},
}

INFO = {
    "title": "pushlake",
    "version": __version__,
    "summary": "A data lake for telematics push data (DriveQuant push and enterprise services).",
    "description": "Receives DriveQuant's trip, trip-deletion, crash and diagnosis pushes (`/push/*`), acknowledging "
                   "each once it is durable; administers teams, hyper-admins, push reports and retry tasks like "
                   f"DriveQuant's enterprise API (`/v1/enterprise/*`, dates `{DQ_DATE}`); and serves team-scoped SQL "
                   "queries and exports (`/v1/query`, `/v1/export/{table}`). Errors are JSON `{error, message}` "
                   "(OAuth2: `{error, error_description}`).",
    "license": {"name": "see the repository"},
}
TAGS = [{"name": "push", "description": "What DriveQuant calls: trips, trip deletions, crashes and diagnoses, each "
                                        "answered `200` once it is durable."},
        {"name": "oauth", "description": "OAuth2 client credentials for the push endpoints."},
        {"name": "enterprise", "description": "Teams, hyper-admins, push reports and retry tasks, as in DriveQuant's "
                                              "enterprise API."},
        {"name": "reads", "description": "Team-scoped SQL and exports."},
        {"name": "service", "description": "Health and this documentation."}]


# -- schemas from types ---------------------------------------------------------------------------------
def _tidy(node):
    """msgspec's schemas, in the document's style: no titles, docstrings on one line, a type beside
    each enum (a single value as ``const``), and ``T | None`` as ``type: [T, "null"]``."""
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _tidy(v) for k, v in node.items() if k != "title"}
    if isinstance(out.get("description"), str):  # a docstring's line breaks are only wrapping
        out["description"] = " ".join(out["description"].split())
    if "enum" in out and "type" not in out:
        kinds = {"string" if isinstance(v, str) else "boolean" if isinstance(v, bool) else "number"
                 for v in out["enum"]}
        if len(kinds) == 1:
            out["type"] = kinds.pop()
        if len(out["enum"]) == 1:
            out["const"] = out.pop("enum")[0]
    alts = out.get("anyOf")
    if alts and len(alts) == 2 and {"type": "null"} in alts:
        other = alts[0] if alts[1] == {"type": "null"} else alts[1]
        if set(other) == {"type"} and isinstance(other["type"], str):
            del out["anyOf"]
            out["type"] = [other["type"], "null"]
    return out


class Schemas:
    """The schema of each type the routes name, and the components they need."""

    def __init__(self, types: list):
        self.types = list(dict.fromkeys(types))
        refs, components = msgspec.json.schema_components(self.types, ref_template=REF)
        self.inline = {t: _tidy(r) for t, r in zip(self.types, refs)}
        self.components = {n: _tidy(s) for n, s in components.items()}

    def of(self, schema) -> dict:
        if isinstance(schema, dict):
            return schema
        if isinstance(schema, str):
            return {"$ref": REF.format(name=schema)}
        return self.inline[schema]


def _typed(routes) -> list:
    """Every type (struct, annotated type) the routes name as a body or a parameter."""
    out = []
    for r in routes:
        for resp in r.responses.values():
            out += [resp.body, *(resp.content or {}).values()]
        out += [r.body and r.body.schema, *(p.schema for p in r.parameters)]
    return [t for t in out if t is not None and not isinstance(t, (dict, str))]


# -- operations from routes -----------------------------------------------------------------------------
def _parameter(p, schemas: Schemas) -> dict:
    return {"name": p.name, "in": p.where, "required": p.required or p.where == "path", "description": p.description,
            "schema": schemas.of(p.schema) if p.schema is not None else {"type": "string"}}


def _media(schema: dict, example=None) -> dict:
    return {"schema": schema} if example is None else {"schema": schema, "example": example}


def _response(resp, schemas: Schemas) -> dict:
    description = resp.description
    if resp.codes:
        description += " (`error`: " + ", ".join(f"`{c}`" for c in resp.codes) + ")"
    out: dict = {"description": description}
    if resp.headers:
        out["headers"] = {h: {"$ref": f"#/components/headers/{h.replace('-', '')}"} for h in resp.headers}
    if resp.content is not None:
        out["content"] = {mime: _media(schemas.of(s)) for mime, s in resp.content.items()}
    elif resp.body is not None:
        out["content"] = {"application/json": _media(schemas.of(resp.body))}
    return out


def operation(r, schemas: Schemas) -> dict:
    out: dict = {"tags": [r.tag], "operationId": r.operation_id, "summary": r.summary, "description": r.description,
                 "security": r.security}
    if r.parameters:
        out["parameters"] = [_parameter(p, schemas) for p in r.parameters]
    if r.body is not None:
        out["requestBody"] = {"required": True, "content": {r.body.media: _media(schemas.of(r.body.schema),
                                                                                  r.body.example)}}
    out["responses"] = {str(status): _response(resp, schemas) for status, resp in sorted(r.responses.items())}
    return out


# -- the document -----------------------------------------------------------------------------------
def document() -> dict:
    """The OpenAPI 3.1 document of ``pushlake.api.make_app`` (a fresh dict at each call)."""
    from .routes import ROUTES  # the table names this module's handlers

    schemas = Schemas(_typed(ROUTES))
    paths: dict = {}
    for r in ROUTES:
        paths.setdefault(r.template, {})[r.method] = operation(r, schemas)
    pushed = pushbodies.components()
    assert not set(pushed) & set(schemas.components), "a push body and a struct share a name"
    doc = {
        "openapi": "3.1.0",
        "info": INFO,
        "tags": TAGS,
        "paths": paths,
        "components": {"securitySchemes": SECURITY_SCHEMES, "schemas": {**pushed, **schemas.components},
                       "headers": {h.replace("-", ""): v for h, v in HEADERS.items()}},
    }
    return orjson.loads(orjson.dumps(doc))  # no part shared with another call's document


# -- /docs: the document as HTML ------------------------------------------------------------------------
CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2.5rem}h3{margin:1.8rem 0 .4rem}
code{background:#f3f3f3;padding:0 .2em;border-radius:3px}
table{border-collapse:collapse;margin:.4rem 0 1rem;width:100%}
td,th{border:1px solid #ddd;padding:.25rem .5rem;vertical-align:top;text-align:left}th{background:#f7f7f7}
.m{display:inline-block;min-width:4.5em;font-weight:bold;text-transform:uppercase}
.get{color:#0a6}.post{color:#06c}.put{color:#a60}.delete{color:#c22}
nav li{list-style:none}nav ul{padding-left:1rem}.muted{color:#777}
pre.example{background:#f6f6f6;padding:.5rem .75rem;border-radius:4px;overflow-x:auto;margin-top:-.6rem}
"""
METHODS = ("get", "post", "put", "patch", "delete")


def _text(s: str | None) -> str:
    """Escaped text, with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(s or "", quote=False))


def _ref_name(schema: dict | None) -> str:
    """A short human name of a schema: a link for a $ref, else its type."""
    if not schema:
        return ""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{name}">{name}</a>'
    if schema.get("type") == "array":
        return f"array of {_ref_name(schema.get('items'))}"
    if "const" in schema:
        return f"<code>{html.escape(orjson.dumps(schema['const']).decode())}</code>"
    t = schema.get("type", "any")
    out = " | ".join(t) if isinstance(t, list) else str(t)
    if "format" in schema:
        out += f" ({schema['format']})"
    if "enum" in schema:
        out += ": " + ", ".join(f"<code>{html.escape(str(v))}</code>" for v in schema["enum"])
    return out


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    if not rows:
        return ""
    th = "".join(f"<th>{h}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def _security(req: list) -> str:
    if not req:
        return "none"
    return " or ".join(" + ".join(f'<a href="#security">{n}</a>' for n in r) or "none" for r in req)


def _operation(path: str, method: str, o: dict) -> str:
    anchor = o.get("operationId", f"{method}-{path}")
    out = [f'<h3 id="{html.escape(anchor)}"><span class="m {method}">{method}</span> <code>{html.escape(path)}</code>'
           f" &mdash; {_text(o.get('summary'))}</h3>",
           f"<p>{_text(o.get('description'))}</p>",
           f"<p><b>Authentication:</b> {_security(o.get('security', []))}</p>"]
    params = [(f"<code>{html.escape(p['name'])}</code>", p["in"], "yes" if p.get("required") else "no",
               _ref_name(p.get("schema")), _text(p.get("description"))) for p in o.get("parameters", [])]
    if params:
        out.append("<p><b>Parameters</b></p>" + _table(("name", "in", "required", "schema", "description"), params))
    rb = o.get("requestBody")
    if rb:
        out.append("<p><b>Request body:</b> " + "; ".join(
            f"<code>{html.escape(ct)}</code> {_ref_name(m.get('schema'))}" for ct, m in rb["content"].items())
            + "</p>")
        out.extend(f'<p class="muted">Example:</p><pre class="example">{html.escape(_example(ct, m["example"]))}</pre>'
                   for ct, m in rb["content"].items() if "example" in m)
    rows = []
    for status, r in o["responses"].items():
        content = "<br>".join(f"<code>{html.escape(ct)}</code> {_ref_name(m.get('schema'))}"
                              for ct, m in r.get("content", {}).items())
        headers = ", ".join(f"<code>{html.escape(h)}</code>" for h in r.get("headers", {}))
        rows.append((f"<b>{status}</b>", _text(r["description"]), content, headers))
    out.append("<p><b>Responses</b></p>" + _table(("status", "description", "body", "headers"), rows))
    return "\n".join(out)


def _example(media: str, example) -> str:
    """A request body example as it is sent: a form urlencoded, JSON indented."""
    if media == "application/x-www-form-urlencoded":
        return urllib.parse.urlencode(example)
    return orjson.dumps(example, option=orjson.OPT_INDENT_2).decode()


def _schema(name: str, s: dict) -> str:
    out = [f'<h3 id="schema-{name}">{name}</h3>']
    if s.get("description"):
        out.append(f"<p>{_text(s['description'])}</p>")
    req = set(s.get("required", ()))
    rows = [(f"<code>{html.escape(p)}</code>", "yes" if p in req else "", _ref_name(ps),
             _text(ps.get("description")))
            for p, ps in s.get("properties", {}).items()]
    out.append(_table(("field", "required", "type", "description"), rows))
    if s.get("type") == "object":
        extra = s.get("additionalProperties", True)
        out.append(f'<p class="muted">{"Other fields are allowed and kept." if extra else "No other fields."}</p>')
    elif not rows:
        out.append(f"<p>Type: {_ref_name(s)}</p>")
    return "\n".join(out)


def render_html(doc: dict) -> str:
    info = doc["info"]
    ops = [(path, m, item[m]) for path, item in doc["paths"].items() for m in METHODS if m in item]
    by_tag: dict[str, list] = {}
    for path, m, o in ops:
        by_tag.setdefault(o.get("tags", ["other"])[0], []).append((path, m, o))
    tag_desc = {t["name"]: t.get("description", "") for t in doc.get("tags", [])}
    nav = "".join(
        f"<li><b>{html.escape(tag)}</b><ul>" + "".join(
            f'<li><a href="#{html.escape(o["operationId"])}"><span class="m {m}">{m}</span> '
            f"{html.escape(path)}</a></li>" for path, m, o in items) + "</ul></li>"
        for tag, items in by_tag.items())
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(info['title'])} "
             f"API</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(info['title'])} API <small class=\"muted\">{html.escape(info['version'])}</small></h1>",
             f"<p>{_text(info.get('description'))}</p>",
             '<p class="muted">Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
             f"{html.escape(doc['openapi'])}).</p>",
             f"<nav><ul>{nav}</ul></nav>"]
    for tag, items in by_tag.items():
        parts.append(f"<h2>{html.escape(tag)}</h2><p>{_text(tag_desc.get(tag))}</p>")
        parts.extend(_operation(path, m, o) for path, m, o in items)
    comps = doc.get("components", {})
    parts.append('<h2 id="security">Authentication</h2>' + _table(
        ("name", "kind", "description"),
        [(f"<code>{n}</code>", _text(s["type"] + (f" {s['scheme']}" if "scheme" in s else "")
                                     + (f" header {s['name']}" if s.get("in") == "header" else "")),
          _text(s.get("description"))) for n, s in comps.get("securitySchemes", {}).items()]))
    parts.append("<h2>Schemas</h2>")
    parts.extend(_schema(n, s) for n, s in comps.get("schemas", {}).items())
    parts.append("</body></html>")
    return "\n".join(parts)


@functools.lru_cache(maxsize=1)
def _json_bytes() -> bytes:
    return orjson.dumps(document())


@functools.lru_cache(maxsize=1)
def _html() -> str:
    return render_html(document())


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_json_bytes(), content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=_html(), content_type="text/html")

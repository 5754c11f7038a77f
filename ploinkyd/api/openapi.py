"""``GET /v1/openapi.json``: the API as OpenAPI 3.1, generated from the endpoint tables.

Nothing here is written by hand per endpoint: paths and parameters come from each
``Endpoint`` (``ploinkyd.api.routes``), query parameters from its ``query`` model, the request
body from ``body`` / ``request_schema``, responses from ``response`` (a type, or a mapping of
status to type for an endpoint with several success answers), and every schema from pydantic,
so the document cannot drift from what the middleware validates and the handlers return.
Errors share one ``ErrorEnvelope`` schema; which error statuses an operation lists follows from
its declaration (a role → 401/403, path parameters → 404, a mutation → 409...).
"""

from __future__ import annotations

import asyncio
import http
import json
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter

from ploinkyd import __version__
from ploinkyd.api.models import ErrorEnvelope
from ploinkyd.api.routes import Endpoint, Endpoints

REF = "#/components/schemas/{model}"
JSON = "application/json"
EVENT_STREAM = "text/event-stream"
# aiohttp's default for a ``{name}`` segment.
SEGMENT_PATTERN = "^[^{}/]+$"

table = Endpoints("meta")

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Invalid input: a query parameter, the body or a name is wrong"),
    401: ("Unauthorized", "Missing or invalid bearer token (TCP without a token, or a bad one)"),
    403: ("Forbidden", "The caller's role is not enough for this operation"),
    404: ("NotFound", "What the path (or the body) names does not exist"),
    409: ("Conflict", "The operation conflicts with the current state"),
    413: ("TooLarge", "The request body is larger than [api] max_body_bytes"),
    429: ("RateLimited", "Too many requests from this client; retry after Retry-After seconds"),
    500: ("Internal", "An internal error; the daemon log has the details"),
    503: ("Unavailable", "The daemon, or the part of it this needs, is not ready"),
    504: ("Timeout", "The request took longer than [api] request_timeout"),
    507: ("NoSpace", "The queue's filesystem is full: nothing was queued; free space and retry"),
}

_DESCRIPTION = """\
The control API of ploinkyd, a local job daemon. Versioned under `/v1`.

**Transports.** A unix socket (`<runtime dir>/control.sock`) and, when configured, TCP
(`[api] listen_tcp`, TLS unless loopback).

**Who you are.** A bearer token (`Authorization: Bearer pkd_...`, from
`ploinkyd token create`) names a role on either transport. Without a token, on the unix
socket the peer's uid (SO_PEERCRED) maps to a role: root and the daemon's own user are
admin, `[api] uid_roles` / `gid_roles` name others, and everyone else gets `[api] unix_role`
(operator unless set to "none"); on TCP a caller without a token is anonymous and may only
call the public operations.

**Roles.** viewer reads; operator also submits and cancels tasks, runs backups and clears the
tile cache; admin also manages plugins, agents and tokens and reads the audit log. Each
operation names the role it needs in `x-required-role`.

**Errors** are `{"error": {"code", "message", "details"}, "request_id", "timestamp"}` with
the HTTP status. **Lists** are `{"data": [...], "pagination": {"page", "per_page", "total",
"pages"}}`. **Rate limits** are per client (token, uid or address): 429 with `Retry-After`.
Every mutating call is written to the audit log.

Plugins may add routes under `/v1/x/{plugin}/`; they are not described here.
"""


def document(tables: Iterable[Endpoints], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every endpoint in ``tables``, in their order."""
    endpoints = [ep for t in tables for ep in t.items]
    schemas = _Schemas()
    envelope = schemas.add(ErrorEnvelope, "serialization")
    names = _operation_ids(endpoints)
    plans = [(ep, names[i], _plan(ep, schemas)) for i, ep in enumerate(endpoints)]
    resolved = schemas.resolve()
    paths: dict[str, dict[str, Any]] = {}
    for ep, op_id, plan in plans:
        path, params = _path_template(ep.path)
        paths.setdefault(path, {})[ep.method.lower()] = _operation(
            ep, op_id, params, plan, resolved
        )
    tags: list[str] = []
    for ep in endpoints:
        if ep.tag not in tags:
            tags.append(ep.tag)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "ploinkyd control API", "version": version, "description": _DESCRIPTION},
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": resolved.defs,
            "responses": {
                name: _error_response(status, text, resolved.get(envelope))
                for status, (name, text) in _ERRORS.items()
            },
            "headers": {
                "X-Request-Id": {
                    "description": "The request's id (sent by the client, or generated); "
                    "also in the error envelope and the audit log",
                    "schema": {"type": "string"},
                },
                "Retry-After": {
                    "description": "Seconds until the client's rate limit allows a request",
                    "schema": {"type": "integer", "minimum": 0},
                },
                "WWW-Authenticate": {"schema": {"type": "string"}},
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `ploinkyd token create --role ROLE --name NAME`. "
                    "On the unix socket it may be left out: the peer's uid maps to a role "
                    "([api] uid_roles, gid_roles, unix_role).",
                }
            },
        },
    }
    _prune(doc)
    return doc


# ---- schemas --------------------------------------------------------------------------------


class _Schemas:
    """Every type the document mentions, turned into JSON schemas in one pydantic pass so that
    a model used in several places becomes one component."""

    def __init__(self) -> None:
        self._types: list[tuple[Any, str]] = []

    def add(self, tp: Any, mode: str) -> int:
        for i, (known, known_mode) in enumerate(self._types):
            if known is tp and known_mode == mode:
                return i
        self._types.append((tp, mode))
        return len(self._types) - 1

    def resolve(self) -> _Resolved:
        inputs = [(i, mode, TypeAdapter(tp)) for i, (tp, mode) in enumerate(self._types)]
        top, defs = TypeAdapter.json_schemas(inputs, ref_template=REF)  # type: ignore[arg-type]
        by_key = {key: schema for (key, _mode), schema in top.items()}
        return _Resolved(by_key, dict(defs.get("$defs", {})))


class _Resolved:
    def __init__(self, top: dict[int, dict[str, Any]], defs: dict[str, Any]) -> None:
        self.top = top
        self.defs = defs

    def get(self, key: int) -> dict[str, Any]:
        return self.top[key]

    def deref(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            return dict(self.defs[ref.rsplit("/", 1)[1]])
        return schema


class _Plan:
    """Keys into ``_Schemas`` for one endpoint, filled before the pydantic pass."""

    def __init__(self) -> None:
        self.query: int | None = None
        self.body: int | None = None
        self.responses: dict[int, int | None] = {}


def _plan(ep: Endpoint, schemas: _Schemas) -> _Plan:
    plan = _Plan()
    if ep.query is not None:
        plan.query = schemas.add(ep.query, "validation")
    if ep.body is not None:
        plan.body = schemas.add(ep.body, "validation")
    elif ep.request_schema is not None:
        plan.body = schemas.add(ep.request_schema, "validation")
    declared = ep.response if isinstance(ep.response, dict) else {ep.status: ep.response}
    for status, tp in declared.items():
        plan.responses[int(status)] = None if tp is None else schemas.add(tp, "serialization")
    return plan


# ---- operations -----------------------------------------------------------------------------


def _operation(
    ep: Endpoint, op_id: str, path_params: list[dict[str, Any]], plan: _Plan, s: _Resolved
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "tags": [ep.tag], "summary": ep.summary}
    if ep.description:
        op["description"] = ep.description
    params = list(path_params)
    if plan.query is not None:
        params += _query_parameters(s.deref(s.get(plan.query)))
    if params:
        op["parameters"] = params
    if plan.body is not None:
        op["requestBody"] = {
            "required": not ep.body_optional,
            "content": {JSON: {"schema": s.get(plan.body)}},
        }
    media = ep.content_type.split(";")[0].strip()
    responses: dict[str, Any] = {}
    for status, key in sorted(plan.responses.items()):
        if status >= 400:
            schema = s.get(key) if key is not None else {"$ref": REF.format(model="ErrorEnvelope")}
            body_media = JSON
        elif media == JSON:
            schema = s.get(key) if key is not None else {"type": "object"}
            body_media = JSON
        elif media == EVENT_STREAM:
            schema = _event_schema(s.get(key) if key is not None else None)
            body_media = media
        else:
            schema = s.get(key) if key is not None else {"type": "string"}
            body_media = media
        responses[str(status)] = {
            "description": http.HTTPStatus(status).phrase,
            "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
            "content": {body_media: {"schema": schema}},
        }
    for status in _error_statuses(ep, bool(path_params)):
        responses.setdefault(str(status), {"$ref": f"#/components/responses/{_ERRORS[status][0]}"})
    op["responses"] = dict(sorted(responses.items()))
    if ep.role is None:
        op["security"] = []
    else:
        op["security"] = [{"bearerAuth": []}]
        op["x-required-role"] = ep.role
    if ep.action is not None:
        op["x-audit-action"] = ep.action
    return op


def _event_schema(data: dict[str, Any] | None) -> dict[str, Any]:
    """One Server-Sent Event, its ``data`` being the JSON of ``data`` when given.

    OpenAPI 3.1 has no word for a stream's items; this follows 3.2, where the schema of a
    ``text/event-stream`` describes each event as ``{data, event, id, retry}`` (tools that
    know 3.2, schemathesis among them, read 3.1 documents the same way).
    """
    payload: dict[str, Any] = {"type": "string"}
    if data is not None:
        payload.update(contentMediaType=JSON, contentSchema=data)
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": payload,
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    }


def _error_statuses(ep: Endpoint, has_path_params: bool) -> Iterator[int]:
    has_body = ep.body is not None or ep.request_schema is not None
    if has_path_params or has_body or ep.query is not None:
        yield 400
    if ep.role is not None:
        yield from (401, 403)
    if has_path_params or has_body:  # a body may name what does not exist (a snapshot)
        yield 404
    if ep.mutating or ep.path.startswith("/v1/tasks/"):
        yield 409  # reading a task whose record is torn answers CORRUPT_RECORD
    if has_body:
        yield 413
    yield from (429, 500, 503)
    if ep.timeout:
        yield 504
    if ep.mutating:
        yield 507  # a mutation writes under a queue, whose filesystem may be full


def _error_response(status: int, text: str, envelope: dict[str, Any]) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
    if status == 429:
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
    return {"description": text, "headers": headers, "content": {JSON: {"schema": envelope}}}


def _query_parameters(model_schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(model_schema.get("required", ()))
    out = []
    for name, prop in model_schema.get("properties", {}).items():
        schema = _without_null(dict(prop))
        schema.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        description = schema.pop("description", None)
        if description:
            param["description"] = description
        if schema.get("default", 0) is None:
            del schema["default"]  # "absent" is how a query says None
        param["schema"] = schema
        out.append(param)
    return out


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` as a query parameter is X, left out: a query string has no null."""
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    kept = [o for o in options if o != {"type": "null"}]
    if len(kept) == len(options):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


# ---- paths and names ------------------------------------------------------------------------


def _path_template(path: str) -> tuple[str, list[dict[str, Any]]]:
    """aiohttp's ``/a/{name}`` or ``/a/{name:regex}`` as an OpenAPI path and its parameters."""
    out: list[str] = []
    params: list[dict[str, Any]] = []
    i = 0
    while i < len(path):
        if path[i] != "{":
            out.append(path[i])
            i += 1
            continue
        depth, j = 0, i
        while True:  # a regex may hold braces of its own, as in {n:\d{1,3}}
            depth += {"{": 1, "}": -1}.get(path[j], 0)
            if depth == 0:
                break
            j += 1
        name, _, regex = path[i + 1 : j].partition(":")
        pattern = f"^(?:{regex})$" if regex else SEGMENT_PATTERN
        params.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": pattern},
            }
        )
        out.append("{" + name + "}")
        i = j + 1
    return "".join(out), params


def _operation_ids(endpoints: Sequence[Endpoint]) -> list[str]:
    """The handler's name; names that several handlers share get their table's tag first."""
    base = [ep.handler.__name__.strip("_") for ep in endpoints]
    shared = {n for n in base if base.count(n) > 1}
    ids: list[str] = []
    for ep, name in zip(endpoints, base, strict=True):
        candidate = f"{ep.tag}_{name}" if name in shared else name
        unique, n = candidate, 2
        while unique in ids:
            unique, n = f"{candidate}_{n}", n + 1
        ids.append(unique)
    return ids


def _prune(doc: dict[str, Any]) -> None:
    """Drop component schemas nothing refers to (the query models, whose fields became
    parameters)."""
    schemas: dict[str, Any] = doc["components"]["schemas"]
    seen: set[str] = set()
    todo = [name for name in _refs({k: v for k, v in doc.items() if k != "components"})]
    todo += [name for name in _refs(doc["components"]["responses"])]
    while todo:
        name = todo.pop()
        if name in seen or name not in schemas:
            continue
        seen.add(name)
        todo += list(_refs(schemas[name]))
    for name in list(schemas):
        if name not in seen:
            del schemas[name]


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            yield ref.rsplit("/", 1)[1]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


# ---- the endpoint ---------------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary[web.Application, bytes] = weakref.WeakKeyDictionary()


def _render() -> bytes:
    from ploinkyd.api.server import tables

    return json.dumps(document(tables(), version=__version__), separators=(",", ":")).encode()


@table.get(
    "/v1/openapi.json",
    summary="This API described in OpenAPI 3.1",
    role=None,
    response=dict[str, Any],
)
async def openapi_document(request: web.Request) -> web.Response:
    """Generated from the endpoint declarations at the first request, then served as is."""
    body = _CACHE.get(request.app)
    if body is None:
        body = await asyncio.to_thread(_render)  # pydantic's schema pass takes a while
        body = _CACHE.setdefault(request.app, body)
    return web.Response(body=body, content_type=JSON)

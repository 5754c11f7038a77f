"""Control-API routes of administration: bearer tokens and the audit log (admins only).

Each operation is one plain function below the routes. The routes call it, and so do
``ploinkyd token`` and ``ploinkyd audit`` when no daemon answers (working on
``<state>/api/tokens.json`` and ``<state>/audit/`` directly), so both paths answer alike.
A token's value appears in exactly one place: the body of the response that creates it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from ploinkyd import audit
from ploinkyd.api.routes import Endpoints, body_of, daemon_of, query_of
from ploinkyd.api.tasks import PageQuery
from ploinkyd.audit import AuditEntry, AuditQuery
from ploinkyd.config import parse_duration
from ploinkyd.roles import Role
from ploinkyd.tokens import NAME_RE, TokenInfo, TokenStore

if TYPE_CHECKING:
    from ploinkyd.api.security import Principal

log = logging.getLogger("ploinkyd.api")
table = Endpoints("admin")

ExpiresIn = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}],
            "description": "seconds, or a duration such as 90m, 12h, 30d, 1w",
        }
    ),
]


class TokenCreate(BaseModel):
    """A token to create; its value is generated and returned once."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        # Documented, but checked by the store, whose message says what is allowed.
        json_schema_extra={"pattern": f"^{NAME_RE.pattern}$"},
        description="1-64 letters, digits, '.', '_' or '-'; unique",
    )
    role: Role
    expires: ExpiresIn | None = Field(None, description="lifetime (default: until revoked)")


class CreatedToken(TokenInfo):
    """The new token's metadata and, this once, the token itself."""

    token: str = Field(description="the bearer token; it is not stored and cannot be shown again")


class TokenPage(BaseModel):
    data: list[TokenInfo]
    pagination: dict[str, int]


class AuditPage(BaseModel):
    data: list[AuditEntry] = Field(description="matching entries, newest first")


def _tokens(request: web.Request) -> TokenStore:
    store: TokenStore = daemon_of(request).api.tokens
    return store


# ---- routes -----------------------------------------------------------------------------


@table.get(
    "/v1/tokens",
    summary="List bearer tokens (names, roles, expiry; never a token or its hash)",
    role="admin",
    query=PageQuery,
    response=TokenPage,
)
async def list_tokens(request: web.Request) -> web.Response:
    q = query_of(request, PageQuery)
    page = await asyncio.to_thread(token_page, _tokens(request), q.page, q.per_page)
    return web.json_response(page)


@table.post(
    "/v1/tokens",
    summary="Create a bearer token; the response is the only place its value appears",
    role="admin",
    action="token.create",
    body=TokenCreate,
    response=CreatedToken,
    status=201,
)
async def create_token_route(request: web.Request) -> web.Response:
    body = body_of(request, TokenCreate)
    principal: Principal = request["principal"]
    request["audit_target"] = body.name
    created = await asyncio.to_thread(create_token, _tokens(request), body, principal.who)
    return web.json_response(created, status=201, headers={"Cache-Control": "no-store"})


@table.delete(
    "/v1/tokens/{name}",
    summary="Revoke a bearer token; requests with it fail from the next one on",
    role="admin",
    action="token.revoke",
    response=TokenInfo,
)
async def revoke_token_route(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    revoked = await asyncio.to_thread(revoke_token, _tokens(request), name)
    return web.json_response(revoked)


@table.get(
    "/v1/audit",
    summary="Read the audit log, newest entries first",
    role="admin",
    query=AuditQuery,
    response=AuditPage,
)
async def read_audit_route(request: web.Request) -> web.Response:
    q = query_of(request, AuditQuery)
    directory = daemon_of(request).api.audit.path.parent
    return web.json_response(await asyncio.to_thread(read_audit, directory, q))


# ---- the operations, shared with the CLI run without a daemon --------------------------


def token_page(store: TokenStore, page: int = 1, per_page: int = 1000) -> dict[str, Any]:
    """The tokens as a list page (``{"data", "pagination"}``), by name."""
    items = [t.model_dump(mode="json") for t in store.listing()]
    start = (page - 1) * per_page
    return {
        "data": items[start : start + per_page],
        "pagination": {
            "page": page,
            "per_page": per_page,
            "total": len(items),
            "pages": (len(items) + per_page - 1) // per_page,
        },
    }


def create_token(store: TokenStore, body: TokenCreate, created_by: str) -> dict[str, Any]:
    """Create a token; ``{"token": value, **info}``. The value is never logged."""
    new = store.create(body.name, body.role, created_by=created_by, expires_in_s=body.expires)
    log.info("token %r (%s) created by %s", new.info.name, new.info.role, created_by)
    return {"token": new.token, **new.info.model_dump(mode="json")}


def revoke_token(store: TokenStore, name: str) -> dict[str, Any]:
    """Revoke the token ``name``; its metadata as it was."""
    info = store.revoke(name)
    log.info("token %r (%s) revoked", info.name, info.role)
    return info.model_dump(mode="json")


def read_audit(directory: Path, q: AuditQuery) -> dict[str, Any]:
    """``{"data": [...]}``: the entries of the log in ``directory`` matching ``q``."""
    return {"data": [e.model_dump(mode="json") for e in audit.read(directory, q)]}

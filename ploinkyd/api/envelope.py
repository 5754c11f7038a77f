"""The SPEC error envelope, request ids and list pagination, for every response."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

log = logging.getLogger("ploinkyd.api")

REQUEST_ID = "X-Request-Id"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "TOO_LARGE",
    429: "RATE_LIMITED",
}


def error_response(
    request_id: str,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {
        "error": {"code": code, "message": message, "details": details or {}},
        "request_id": request_id,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return web.json_response(
        body, status=status, headers={REQUEST_ID: request_id, **(headers or {})}
    )


def new_request_id() -> str:
    return secrets.token_hex(8)


def status_code(status: int) -> str:
    """The envelope's ``code`` for an HTTP error aiohttp raised itself."""
    return _HTTP_CODES.get(status, "HTTP_ERROR")


def paginate(request: web.Request, items: Sequence[Any]) -> dict[str, Any]:
    page = _int_param(request, "page", 1, 1, 10**9)
    per_page = _int_param(request, "per_page", 50, 1, 1000)
    total = len(items)
    start = (page - 1) * per_page
    return {
        "data": list(items[start : start + per_page]),
        "pagination": {
            "page": page,
            "per_page": per_page,
            "total": total,
            "pages": (total + per_page - 1) // per_page,
        },
    }


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        from ploinkyd.errors import UserError

        raise UserError(
            f"query parameter {name!r} must be an integer from {lo} to {hi}, got {raw!r}"
        )
    return value

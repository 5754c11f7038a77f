"""The SPEC error envelope, request ids and list pagination, for every response."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ploinkyd.errors import PloinkyError, UserError

log = logging.getLogger("ploinkyd.api")

REQUEST_ID = "X-Request-Id"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

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


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get(REQUEST_ID) or secrets.token_hex(8)
    request["request_id"] = request_id
    try:
        response = await handler(request)
    except PloinkyError as exc:
        return error_response(request_id, exc.http_status, exc.code, exc.message, exc.details)
    except web.HTTPException as exc:  # aiohttp's own 404/405/413 get the envelope too
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "HTTP_ERROR")
        return error_response(request_id, exc.status, code, exc.reason, headers=None)
    except Exception:
        log.exception("request %s %s failed", request.method, request.path)
        return error_response(request_id, 500, "INTERNAL", "internal error; see the daemon log")
    response.headers[REQUEST_ID] = request_id
    return response


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


def float_param(request: web.Request, name: str, default: float | None, hi: float) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= hi:
        from ploinkyd.errors import UserError

        raise UserError(f"query parameter {name!r} must be a number from 0 to {hi:g}, got {raw!r}")
    return value


async def read_model(request: web.Request, model: type[M], *, empty_ok: bool = False) -> M:
    """The JSON body validated as ``model``; a bad body is a 400 naming each bad field."""
    from ploinkyd.kinds import describe_validation, validation_details

    raw = await request.read()
    if not raw.strip() and empty_ok:
        return model()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise UserError(f"request body is not valid JSON: {exc}", code="INVALID_JSON") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise UserError(
            f"invalid request body: {describe_validation(exc)}",
            details={"errors": validation_details(exc)},
        ) from None

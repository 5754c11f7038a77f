"""The control API's endpoint table: each route with its role, models and audit action.

One declaration feeds the aiohttp router, the security middleware (which role a route needs,
whether it is audited, how long it may run) and ``/v1/openapi.json`` (its parameters, body
and responses), so the three cannot drift apart::

    table = Endpoints("tasks")

    @table.post("/v1/queues/{queue}/tasks", role="operator", action="task.submit",
                summary="Submit a task", body=TaskBody, query=SubmitQuery,
                response=TaskRef, status=201)
    async def submit(request: web.Request) -> web.Response:
        body = body_of(request, TaskBody)
        ...

The framework validates ``query`` and ``body`` before the handler runs (a bad one is a 400
naming each field), so handlers read typed models with ``query_of``/``body_of``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ploinkyd.errors import UserError
from ploinkyd.queue.task import MAX_NESTING, beyond_limits
from ploinkyd.roles import Role

if TYPE_CHECKING:
    from ploinkyd.daemon import Daemon

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
M = TypeVar("M", bound=BaseModel)

_QUERY = "ploinkyd.query"
_BODY = "ploinkyd.body"
DAEMON = web.AppKey["Daemon"]("daemon")


def daemon_of(request: web.Request) -> Daemon:
    return request.app[DAEMON]


@dataclass(frozen=True)
class Endpoint:
    """One route of the API.

    ``role`` None means public: answered without credentials even on TCP (health probes).
    ``action`` names the call in the audit log; every non-GET endpoint has one.
    ``timeout`` False exempts the handler from ``[api] request_timeout`` (event streams, and
    operations bounded by their own limits, such as a git clone); waits add their ``wait``.
    ``response`` is a pydantic model (or any type ``TypeAdapter`` takes) describing a 2xx JSON
    body (for an event stream, each event's data), or ``{status: type}`` for an endpoint with
    several success answers; None for text responses (a JSON one is then a generic object).
    """

    method: str
    path: str
    handler: Handler
    role: Role | None
    summary: str
    tag: str
    action: str | None = None
    body: type[BaseModel] | None = None
    body_optional: bool = False
    # A body the handler validates itself (a task is written exactly as sent), documented only.
    request_schema: Any = None
    query: type[BaseModel] | None = None
    response: Any = None
    status: int = 200
    content_type: str = "application/json"
    timeout: bool = True
    readonly: bool = False  # a POST that only computes (explain): not audited
    description: str = ""

    @property
    def mutating(self) -> bool:
        return self.method != "GET" and not self.readonly


class Endpoints:
    """A module's list of endpoints, registered on the app by ``api.server.build_app``."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.items: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        role: Role | None,
        action: str | None = None,
        **options: Any,
    ) -> Callable[[H], H]:
        if method != "GET" and not options.get("readonly") and (action is None or role is None):
            # A mutation that nobody is accountable for, or that anyone may call, is a bug.
            raise TypeError(f"{method} {path}: a mutating endpoint needs a role and an action")

        def register(handler: H) -> H:
            doc = (handler.__doc__ or "").strip()
            self.items.append(
                Endpoint(
                    method,
                    path,
                    handler,
                    role,
                    summary,
                    self.tag,
                    action,
                    description=options.pop("description", doc),
                    **options,
                )
            )
            return handler

        return register

    def get(
        self, path: str, *, summary: str, role: Role | None = "viewer", **options: Any
    ) -> Callable[[H], H]:
        return self.route("GET", path, summary=summary, role=role, **options)

    def post(
        self, path: str, *, summary: str, role: Role, action: str | None = None, **options: Any
    ) -> Callable[[H], H]:
        return self.route("POST", path, summary=summary, role=role, action=action, **options)

    def delete(
        self, path: str, *, summary: str, role: Role, action: str, **options: Any
    ) -> Callable[[H], H]:
        return self.route("DELETE", path, summary=summary, role=role, action=action, **options)


# ---- typed query and body ---------------------------------------------------------------


async def parse_inputs(request: web.Request, endpoint: Endpoint) -> None:
    """Validate the endpoint's query and body models; a bad one is a 400 naming each field."""
    if endpoint.query is not None:
        request[_QUERY] = _validate(endpoint.query, dict(request.query), "query parameter")
    if endpoint.body is not None:
        raw = await request.read()
        if not raw.strip() and endpoint.body_optional:
            request[_BODY] = endpoint.body()
            return
        request[_BODY] = _validate(endpoint.body, _loads(raw), "request body")


async def json_body(request: web.Request) -> Any:
    """The body as JSON, for a handler that validates it itself; not JSON is a 400."""
    return _loads(await request.read())


def _loads(raw: bytes) -> Any:
    try:
        value = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:
        if "digits" in str(exc) and not isinstance(exc, json.JSONDecodeError):
            message = (
                "request body holds a number too long to read (integers may have at most "
                f"{sys.get_int_max_str_digits()} digits); send it as a string"
            )
            raise UserError(message, code="INVALID_JSON") from None
        raise UserError(f"request body is not valid JSON: {exc}", code="INVALID_JSON") from None
    # The same limits as a task file's (brackets and escapes are ASCII, so latin-1 will do).
    problem, where = beyond_limits(raw.decode("latin-1"), value)
    if problem == "deep":
        raise _too_deep()
    if problem == "surrogate":
        raise UserError(
            f"request body holds a lone surrogate escape (such as \\ud800) at {where}: it is "
            "not a character; send the text as UTF-8, or a character beyond U+FFFF as a pair",
            code="INVALID_JSON",
            details={"loc": where},
        )
    return value


def _too_deep() -> UserError:
    return UserError(
        f"request body nests arrays or objects more than {MAX_NESTING} levels deep",
        code="INVALID_JSON",
        details={"max_nesting": MAX_NESTING},
    )


def _validate(model: type[M], data: Any, what: str) -> M:
    from ploinkyd.kinds import describe_validation, validation_details

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(
            f"invalid {what}: {describe_validation(exc)}",
            details={"errors": validation_details(exc)},
        ) from None


def query_of(request: web.Request, model: type[M]) -> M:
    return cast(M, request[_QUERY])


def parsed_query(request: web.Request) -> BaseModel | None:
    """The validated query model of the request's endpoint, if it declares one."""
    query: BaseModel | None = request.get(_QUERY)
    return query


def body_of(request: web.Request, model: type[M]) -> M:
    return cast(M, request[_BODY])

"""Control-API routes of tiles: runner status, operators, cache, containers, ``explain``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ploinkyd.errors import DaemonUnavailable, UserError

if TYPE_CHECKING:
    from ploinkyd.daemon import Daemon
    from ploinkyd.tiles.service import TileService

routes = web.RouteTableDef()


def _tiles(request: web.Request) -> TileService:
    from ploinkyd.api.server import DAEMON

    daemon: Daemon = request.app[DAEMON]
    if daemon.tiles is None:
        raise DaemonUnavailable("the tile service is not running yet")
    return daemon.tiles


@routes.get("/v1/tiles")
async def status(request: web.Request) -> web.Response:
    return web.json_response(_tiles(request).status())


@routes.get("/v1/tiles/operators")
async def operators(request: web.Request) -> web.Response:
    from ploinkyd.api.envelope import paginate

    queue = request.query.get("queue")
    rows = [
        {
            "name": name,
            "version": spec.version,
            "owner": spec.owner,
            "image": spec.image or _tiles(request).default_image(),
            "mode": "exec" if spec.exec else "runtime",
            "fusable": spec.fusable and spec.exec is None,
            "description": spec.description,
        }
        for name, spec in sorted(_tiles(request).operators_for(queue).items())
    ]
    return web.json_response(paginate(request, rows))


@routes.get("/v1/tiles/cache")
async def cache_stats(request: web.Request) -> web.Response:
    return web.json_response(_tiles(request).cache.stats())


@routes.delete("/v1/tiles/cache")
async def cache_clear(request: web.Request) -> web.Response:
    cache = _tiles(request).cache
    cleared = cache.stats().get("entries", 0)
    cache.clear()
    return web.json_response({"cleared": cleared, **cache.stats()})


@routes.get("/v1/tiles/containers")
async def containers(request: web.Request) -> web.Response:
    from ploinkyd.api.envelope import paginate

    runner: Any = _tiles(request).runner
    listing = runner.containers() if hasattr(runner, "containers") else []
    return web.json_response(paginate(request, listing))


@routes.post("/v1/tiles/explain")
async def explain(request: web.Request) -> web.Response:
    """Body: a pipeline task, or just its ``input`` object. ``?format=text`` adds the text."""
    from ploinkyd.tiles.compiler import explain as explain_text

    try:
        body = await request.json(loads=json.loads)
    except ValueError as exc:
        raise UserError(f"request body is not valid JSON: {exc}", code="INVALID_JSON") from None
    pipeline, queue = pipeline_of(body)
    plan = _tiles(request).plan(pipeline, request.query.get("queue", queue))
    out = plan.model_dump(mode="json")
    out["text"] = explain_text(plan)
    return web.json_response(out)


def pipeline_of(body: Any) -> tuple[list[Any] | dict[str, Any], str | None]:
    """The ``pipeline`` of a pipeline task, of its input object, or of a tile task."""
    if not isinstance(body, dict):
        raise UserError(
            "expected a pipeline task or its input object (a JSON object with 'pipeline')",
            code="INVALID_PIPELINE",
        )
    given = body.get("input")
    inner: dict[str, Any] = given if isinstance(given, dict) else body
    if "pipeline" in inner and isinstance(inner["pipeline"], list | dict):
        return inner["pipeline"], None
    if "op" in inner:  # a tile task is a one-stage pipeline
        return [{"op": inner["op"], "params": inner.get("params", {})}], None
    raise UserError(
        "no 'pipeline' found: pass a pipeline task, its input object, or a tile task",
        code="INVALID_PIPELINE",
    )

"""Control-API routes of tiles: runner status, operators, cache, containers, ``explain``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ploinkyd.api import models
from ploinkyd.api.envelope import paginate
from ploinkyd.api.routes import Endpoints, daemon_of, json_body, query_of
from ploinkyd.api.tasks import PageQuery
from ploinkyd.errors import DaemonUnavailable, UserError

if TYPE_CHECKING:
    from ploinkyd.tiles.service import TileService

table = Endpoints("tiles")


class OperatorsQuery(PageQuery):
    queue: str | None = Field(None, description="operators as seen from this queue's agents")


class ExplainQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    queue: str | None = Field(None, description="compile as this queue would")


def _tiles(request: web.Request) -> TileService:
    daemon = daemon_of(request)
    if daemon.tiles is None:
        raise DaemonUnavailable("the tile service is not running yet")
    return daemon.tiles


@table.get("/v1/tiles", summary="Tile runner status", response=models.TilesStatus)
async def status(request: web.Request) -> web.Response:
    return web.json_response(_tiles(request).status())


@table.get(
    "/v1/tiles/operators",
    summary="Tile operators",
    query=OperatorsQuery,
    response=models.OperatorPage,
)
async def operators(request: web.Request) -> web.Response:
    queue = query_of(request, OperatorsQuery).queue
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


@table.get("/v1/tiles/cache", summary="Tile cache statistics", response=models.CacheStats)
async def cache_stats(request: web.Request) -> web.Response:
    return web.json_response(_tiles(request).cache.stats())


@table.delete(
    "/v1/tiles/cache",
    summary="Clear the tile cache",
    role="operator",
    action="tiles.cache.clear",
    response=models.CacheCleared,
)
async def cache_clear(request: web.Request) -> web.Response:
    cache = _tiles(request).cache
    cleared = cache.stats().get("entries", 0)
    cache.clear()
    return web.json_response({"cleared": cleared, **cache.stats()})


@table.get(
    "/v1/tiles/containers",
    summary="Warm tile containers",
    query=PageQuery,
    response=models.ContainerPage,
)
async def containers(request: web.Request) -> web.Response:
    runner: Any = _tiles(request).runner
    listing = runner.containers() if hasattr(runner, "containers") else []
    return web.json_response(paginate(request, listing))


@table.post(
    "/v1/tiles/explain",
    summary="Compile a pipeline and show its plan",
    role="viewer",
    readonly=True,
    query=ExplainQuery,
    request_schema=models.ExplainRequest,
    response=models.Explained,
)
async def explain(request: web.Request) -> web.Response:
    """Body: a pipeline task, or just its ``input`` object. ``?format=text`` adds the text."""
    from ploinkyd.tiles.compiler import explain as explain_text

    body = await json_body(request)
    pipeline, queue = pipeline_of(body)
    plan = _tiles(request).plan(pipeline, query_of(request, ExplainQuery).queue or queue)
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

"""Control-API routes of plugins: list, install, update, remove (admins only for changes)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ploinkyd import plugin_admin
from ploinkyd.api.auth import require_admin
from ploinkyd.api.envelope import paginate, read_model

routes = web.RouteTableDef()


class InstallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="URL[@REF][#subdirectory=DIR] or a local path")
    with_requires: bool = False


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str | None = Field(None, description="move the pin to this branch, tag or commit")


def _daemon(request: web.Request):  # type: ignore[no-untyped-def]
    from ploinkyd.api.server import DAEMON

    return request.app[DAEMON]


@routes.get("/v1/plugins")
async def list_plugins(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    page = paginate(request, plugin_admin.listing(daemon.plugins))
    repos = daemon.plugins.repos
    page["problems"] = dict(repos.problems) if repos is not None else {}
    return web.json_response(page)


@routes.post("/v1/plugins")
async def install_plugin(request: web.Request) -> web.Response:
    require_admin(request, "installing a plugin")
    body = await read_model(request, InstallRequest)
    daemon = _daemon(request)
    change = await plugin_admin.install(
        daemon.plugins, body.url, with_requires=body.with_requires, daemon=daemon
    )
    return web.json_response(change.model_dump(mode="json"), status=201)


@routes.post("/v1/plugins/{name}/update")
async def update_plugin(request: web.Request) -> web.Response:
    require_admin(request, "updating a plugin")
    body = await read_model(request, UpdateRequest, empty_ok=True)
    daemon = _daemon(request)
    change = await plugin_admin.update(
        daemon.plugins, request.match_info["name"], ref=body.ref, daemon=daemon
    )
    return web.json_response(change.model_dump(mode="json"))


@routes.delete("/v1/plugins/{name}")
async def remove_plugin(request: web.Request) -> web.Response:
    require_admin(request, "removing a plugin")
    daemon = _daemon(request)
    change = await plugin_admin.remove(daemon.plugins, request.match_info["name"], daemon=daemon)
    return web.json_response(change.model_dump(mode="json"))

"""Control-API routes of plugins: list, install, update, remove (admins only for changes)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ploinkyd import plugin_admin
from ploinkyd.api import models
from ploinkyd.api.envelope import paginate
from ploinkyd.api.routes import Endpoints, body_of, daemon_of
from ploinkyd.api.tasks import PageQuery

table = Endpoints("plugins")


class InstallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="URL[@REF][#subdirectory=DIR] or a local path")
    with_requires: bool = False


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str | None = Field(None, description="move the pin to this branch, tag or commit")


@table.get(
    "/v1/plugins",
    summary="Installed plugins, their pins and problems",
    query=PageQuery,
    response=models.PluginPage,
)
async def list_plugins(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    page = paginate(request, plugin_admin.listing(daemon.plugins))
    repos = daemon.plugins.repos
    page["problems"] = dict(repos.problems) if repos is not None else {}
    return web.json_response(page)


# Plugin changes are bounded by [plugins] git_timeout_s, and cancelling one half-way would
# leave a clone behind: no request timeout.
@table.post(
    "/v1/plugins",
    summary="Install a plugin from a git repository or a local path",
    role="admin",
    action="plugin.install",
    body=InstallRequest,
    status=201,
    response=plugin_admin.PluginChange,
    timeout=False,
)
async def install_plugin(request: web.Request) -> web.Response:
    body = body_of(request, InstallRequest)
    daemon = daemon_of(request)
    change = await plugin_admin.install(
        daemon.plugins, body.url, with_requires=body.with_requires, daemon=daemon
    )
    return web.json_response(change.model_dump(mode="json"), status=201)


@table.post(
    "/v1/plugins/{name}/update",
    summary="Fetch a plugin's repository and move its pin",
    role="admin",
    action="plugin.update",
    body=UpdateRequest,
    body_optional=True,
    response=plugin_admin.PluginChange,
    timeout=False,
)
async def update_plugin(request: web.Request) -> web.Response:
    body = body_of(request, UpdateRequest)
    daemon = daemon_of(request)
    change = await plugin_admin.update(
        daemon.plugins, request.match_info["name"], ref=body.ref, daemon=daemon
    )
    return web.json_response(change.model_dump(mode="json"))


@table.delete(
    "/v1/plugins/{name}",
    summary="Unload and remove a plugin",
    role="admin",
    action="plugin.remove",
    timeout=False,
    response=plugin_admin.PluginChange,
)
async def remove_plugin(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    change = await plugin_admin.remove(daemon.plugins, request.match_info["name"], daemon=daemon)
    return web.json_response(change.model_dump(mode="json"))

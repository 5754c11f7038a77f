"""Control-API routes of agents: list, show, start/stop/restart, logs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ploinkyd.api.envelope import float_param, paginate

if TYPE_CHECKING:
    from ploinkyd.agents.manager import AgentManager

routes = web.RouteTableDef()


def _agents(request: web.Request) -> AgentManager:
    from ploinkyd.api.server import DAEMON

    return request.app[DAEMON].agents


@routes.get("/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    manager = _agents(request)
    page = paginate(request, manager.listing())
    page["problems"] = manager.problems
    return web.json_response(page)


@routes.get("/v1/agents/{name}")
async def show_agent(request: web.Request) -> web.Response:
    manager = _agents(request)
    return web.json_response(manager.describe(manager.get(request.match_info["name"])))


async def _act(request: web.Request, action: str) -> web.Response:
    manager = _agents(request)
    name = request.match_info["name"]
    agent = await getattr(manager, action)(name)
    return web.json_response(manager.describe(agent))


@routes.post("/v1/agents/{name}/start")
async def start_agent(request: web.Request) -> web.Response:
    return await _act(request, "start")


@routes.post("/v1/agents/{name}/stop")
async def stop_agent(request: web.Request) -> web.Response:
    return await _act(request, "stop")


@routes.post("/v1/agents/{name}/restart")
async def restart_agent(request: web.Request) -> web.Response:
    return await _act(request, "restart")


@routes.get("/v1/agents/{name}/logs")
async def agent_logs(request: web.Request) -> web.Response:
    lines = int(float_param(request, "lines", 200.0, 10000.0) or 0)
    return web.json_response(await _agents(request).logs(request.match_info["name"], lines))
